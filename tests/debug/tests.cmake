# tests/debug/tests.cmake — the debug asserts of MEMFIT_DEBUG (allocator/src/internal.h)
# fire: built at level 1 against the internal header, whatever the library's level.
add_executable(memfit_debug_asserts ${CMAKE_CURRENT_LIST_DIR}/test_debug_asserts.c
               ${PROJECT_SOURCE_DIR}/allocator/src/debug.c)
target_include_directories(memfit_debug_asserts PRIVATE ${PROJECT_SOURCE_DIR}/allocator/src
                                                        ${PROJECT_SOURCE_DIR}/allocator/include)
target_compile_definitions(memfit_debug_asserts PRIVATE MEMFIT_DEBUG=1 _GNU_SOURCE)
target_link_libraries(memfit_debug_asserts PRIVATE Threads::Threads)
add_test(NAME Debug.CounterBelowZeroAborts COMMAND memfit_debug_asserts)
