# benchmarks/replay/build.cmake — memfit-replay, the trace replayer (see
# benchmarks/README.md). It links memfit and libdl only: never jemalloc, so
# that the malloc baseline is glibc's and jemalloc comes from dlopen alone.
add_executable(memfit-replay
  ${CMAKE_CURRENT_LIST_DIR}/main.c
  ${CMAKE_CURRENT_LIST_DIR}/trace.c
  ${CMAKE_CURRENT_LIST_DIR}/idmap.c
  ${CMAKE_CURRENT_LIST_DIR}/replay.c
  ${CMAKE_CURRENT_LIST_DIR}/baseline.c
  ${CMAKE_CURRENT_LIST_DIR}/native.c
  ${CMAKE_CURRENT_LIST_DIR}/summary.c)
# dladdr and Dl_info are GNU extensions; clock_gettime and strdup are POSIX.
target_compile_definitions(memfit-replay PRIVATE _GNU_SOURCE)
target_link_libraries(memfit-replay PRIVATE memfit ${CMAKE_DL_LIBS})
