# tests/emulated_cuda/tests.cmake — the emulated CUDA driver (libcuda.so.1 over
# host memory, in ${CMAKE_BINARY_DIR}/tests/emulated_cuda/lib) and the suite
# that runs memfit's cuda backend over it (ctest -L emulated-cuda): the
# emulator's own tests, the backend, the allocator and the plugin over it, and
# tests/test_cuda.cpp. Only these tests put the emulator on LD_LIBRARY_PATH.
find_path(EMUCUDA_CUDA_INCLUDE_DIR cuda.h
          HINTS $ENV{CUDA_HOME}/include $ENV{CUDA_PATH}/include /usr/local/cuda/include)
if(NOT EMUCUDA_CUDA_INCLUDE_DIR)
  message(STATUS "memfit: cuda.h not found, the emulated CUDA driver and its tests (label emulated-cuda) are not built")
  return()
endif()
if(MEMFIT_CUDA STREQUAL "OFF")
  message(STATUS "memfit: MEMFIT_CUDA=OFF, the emulated CUDA driver tests are not built")
  return()
endif()

set(EMUCUDA_DIR ${CMAKE_CURRENT_LIST_DIR})
set(EMUCUDA_LIB_DIR ${CMAKE_BINARY_DIR}/tests/emulated_cuda/lib)

add_library(emucuda SHARED ${EMUCUDA_DIR}/emucuda.c)
set_target_properties(emucuda PROPERTIES
  OUTPUT_NAME cuda SOVERSION 1
  LIBRARY_OUTPUT_DIRECTORY ${EMUCUDA_LIB_DIR})
target_include_directories(emucuda PRIVATE ${EMUCUDA_DIR})
target_include_directories(emucuda SYSTEM PRIVATE ${EMUCUDA_CUDA_INCLUDE_DIR})
target_compile_definitions(emucuda PRIVATE _GNU_SOURCE)
# nodelete: stream workers are still running when memfit dlcloses the driver.
target_link_libraries(emucuda PRIVATE Threads::Threads)
target_link_options(emucuda PRIVATE -Wl,-z,nodelete)

file(GLOB EMUCUDA_TEST_SOURCES CONFIGURE_DEPENDS ${EMUCUDA_DIR}/test_*.cpp)
add_executable(memfit_emulated_tests ${EMUCUDA_TEST_SOURCES} ${CMAKE_CURRENT_SOURCE_DIR}/test_cuda.cpp)
# memfit dlopens the driver: the tests link memfit, not the emulator.
target_link_libraries(memfit_emulated_tests PRIVATE memfit GTest::gtest GTest::gtest_main Threads::Threads
                      ${CMAKE_DL_LIBS})
target_include_directories(memfit_emulated_tests PRIVATE ${EMUCUDA_DIR} ${CMAKE_CURRENT_SOURCE_DIR})
target_include_directories(memfit_emulated_tests SYSTEM PRIVATE ${EMUCUDA_CUDA_INCLUDE_DIR})
target_compile_definitions(memfit_emulated_tests PRIVATE MEMFIT_HAVE_CUDA=1)
add_dependencies(memfit_emulated_tests emucuda)
if(MEMFIT_SANITIZE)
  target_compile_options(memfit_emulated_tests PRIVATE -O0)  # as memfit_tests (tests/CMakeLists.txt)
endif()

include(GoogleTest)
set(EMUCUDA_ENV "LD_LIBRARY_PATH=${EMUCUDA_LIB_DIR}")
# EmuEnv.* need process-wide settings: they run below, each with its own
# (before CMake 3.22, which has no TEST_FILTER, they are also discovered, and skip).
set(EMUCUDA_FILTER)
if(NOT CMAKE_VERSION VERSION_LESS 3.22)
  set(EMUCUDA_FILTER TEST_FILTER "-EmuEnv*:EmuLazy*")
endif()
gtest_discover_tests(memfit_emulated_tests
  TEST_PREFIX "emucuda."
  ${EMUCUDA_FILTER}
  DISCOVERY_TIMEOUT 60
  PROPERTIES LABELS emulated-cuda ENVIRONMENT "${EMUCUDA_ENV}" TIMEOUT 300)

# emucuda_env_test(NAME FILTER VAR=VALUE...): the tests matching FILTER in a
# process with these settings. A skip fails it: the settings did not arrive.
function(emucuda_env_test name filter)
  add_test(NAME emucuda.env.${name} COMMAND memfit_emulated_tests --gtest_filter=${filter})
  set_tests_properties(emucuda.env.${name} PROPERTIES
    LABELS emulated-cuda TIMEOUT 300 ENVIRONMENT "${EMUCUDA_ENV};${ARGN}"
    FAIL_REGULAR_EXPRESSION "\\[  SKIPPED \\]")
endfunction()
emucuda_env_test(lazy "EmuLazy.*" EMUCUDA_DEVICES=1)
emucuda_env_test(no_device "EmuEnv.NoDevice*" EMUCUDA_DEVICES=0)
emucuda_env_test(init_error "EmuEnv.InitFailure*" EMUCUDA_INIT_ERROR=CUDA_ERROR_UNKNOWN)
emucuda_env_test(no_vmm "EmuEnv.NoVmm*" EMUCUDA_NO_VMM=1)
emucuda_env_test(two_devices "EmuEnv.TwoDevices*" EMUCUDA_DEVICES=2 EMUCUDA_TOTAL_MEMORY=256MiB)
emucuda_env_test(small_granule "EmuEnv.SmallGranule*" EMUCUDA_GRANULE=64KiB,256KiB EMUCUDA_TOTAL_MEMORY=64MiB)
