# tests/install/tests.cmake — install_consumer (ctest -R install): this build
# tree installed into a prefix under the build directory, and a project of its
# own (tests/install/consumer) built and run against it through
# find_package(memfit CONFIG REQUIRED); the installed memfit-plan and
# memfit-replay run from the prefix. Steps: run_consumer.cmake.
set(_mf_install_test ${CMAKE_CURRENT_BINARY_DIR}/install-consumer)
add_test(NAME install_consumer
         COMMAND ${CMAKE_COMMAND}
                 -DBUILD_DIR=${PROJECT_BINARY_DIR}
                 -DPREFIX=${_mf_install_test}/prefix
                 -DCONSUMER_SOURCE=${CMAKE_CURRENT_LIST_DIR}/consumer
                 -DCONSUMER_BUILD=${_mf_install_test}/consumer
                 -DGENERATOR=${CMAKE_GENERATOR}
                 -DC_COMPILER=${CMAKE_C_COMPILER}
                 -DVERSION=${PROJECT_VERSION}
                 -P ${CMAKE_CURRENT_LIST_DIR}/run_consumer.cmake)
set_tests_properties(install_consumer PROPERTIES TIMEOUT 120 LABELS install)
