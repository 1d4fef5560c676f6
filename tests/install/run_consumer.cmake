# tests/install/run_consumer.cmake — the install_consumer test (cmake -P):
# `cmake --install` of the build tree into PREFIX, then the consumer project
# configured against PREFIX alone (CMAKE_PREFIX_PATH), built and run, and the
# installed tools run from PREFIX/bin; nothing runs with LD_LIBRARY_PATH, so
# each binary finds memfit's libraries by its own RPATH.
# Arguments (-D): BUILD_DIR, PREFIX, CONSUMER_SOURCE, CONSUMER_BUILD, GENERATOR,
# C_COMPILER, VERSION.
foreach(_var BUILD_DIR PREFIX CONSUMER_SOURCE CONSUMER_BUILD GENERATOR C_COMPILER VERSION)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "run_consumer.cmake: -D${_var}=... is missing")
  endif()
endforeach()

# step(WHAT EXPECT_REGEX COMMAND...): run COMMAND without LD_LIBRARY_PATH, fail
# naming WHAT unless it exits 0 and its output matches EXPECT_REGEX.
function(step what expect)
  execute_process(COMMAND ${CMAKE_COMMAND} -E env --unset=LD_LIBRARY_PATH ${ARGN}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0 OR NOT out MATCHES "${expect}")
    message(FATAL_ERROR "install_consumer: ${what} failed (exit ${rc}; expected output matching '${expect}')\n"
                        "command: ${ARGN}\nstdout:\n${out}\nstderr:\n${err}")
  endif()
  message(STATUS "install_consumer: ${what}: ok")
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE ${PREFIX} ${CONSUMER_BUILD})
step("cmake --install into ${PREFIX}" "" ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${PREFIX})
foreach(_file include/memfit/memfit.h include/memfit/plan.h bin/memfit-plan bin/memfit-replay)
  if(NOT EXISTS ${PREFIX}/${_file})
    message(FATAL_ERROR "install_consumer: cmake --install did not install ${_file} into ${PREFIX}")
  endif()
endforeach()

# The registries off: the consumer must find this prefix's memfit, no other.
step("configure the consumer" "" ${CMAKE_COMMAND} -S ${CONSUMER_SOURCE} -B ${CONSUMER_BUILD} -G ${GENERATOR}
     -DCMAKE_C_COMPILER=${C_COMPILER} -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=${PREFIX}
     -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF)
file(STRINGS ${CONSUMER_BUILD}/CMakeCache.txt _found REGEX "^memfit_DIR:")
file(REAL_PATH ${PREFIX} _real_prefix)
string(REGEX REPLACE "^memfit_DIR:[A-Z]*=" "" _found "${_found}")
file(REAL_PATH "${_found}" _found)
string(FIND "${_found}" "${_real_prefix}/" _at)
if(NOT _at EQUAL 0)
  message(FATAL_ERROR "install_consumer: the consumer found memfit in ${_found}, not under ${PREFIX}")
endif()
step("build the consumer" "" ${CMAKE_COMMAND} --build ${CONSUMER_BUILD})

string(REPLACE "." "\\." _version "${VERSION}")
step("run the consumer" "^memfit ${_version} from " ${CONSUMER_BUILD}/memfit_consumer)
string(REGEX REPLACE "^memfit [^ ]+ from ([^\n]*)\n?$" "\\1" _loaded "${step_output}")
file(REAL_PATH "${_loaded}" _loaded)
string(FIND "${_loaded}" "${_real_prefix}/" _at)
if(NOT _at EQUAL 0)
  message(FATAL_ERROR "install_consumer: the consumer loaded ${_loaded}, not the libmemfit under ${PREFIX}")
endif()
step("run the planner-only consumer" "^memfit-plan ${_version}\n" ${CONSUMER_BUILD}/memfit_plan_consumer)
step("${PREFIX}/bin/memfit-plan --help" "usage: memfit-plan " ${PREFIX}/bin/memfit-plan --help)
step("${PREFIX}/bin/memfit-replay --help" "usage: memfit-replay " ${PREFIX}/bin/memfit-replay --help)
