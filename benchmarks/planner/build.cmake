# benchmarks/planner/build.cmake — memfit-plan-bench: the planner's time on
# generated GPT-like profiles of 12, 50 and 100 layers (prints, writes nothing).
add_executable(memfit-plan-bench ${CMAKE_CURRENT_LIST_DIR}/bench_plan.c)
# clock_gettime is POSIX.
target_compile_definitions(memfit-plan-bench PRIVATE _POSIX_C_SOURCE=200809L)
target_link_libraries(memfit-plan-bench PRIVATE memfit_plan)
