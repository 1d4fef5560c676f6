# cmake/install.cmake — what `cmake --install` puts where (included last by the
# top-level CMakeLists.txt, when every target exists).
# * Into a prefix: the headers (include/memfit/), libmemfit and libmemfit_plan
#   (and libmemfit_torch when built) in lib/, memfit-plan and memfit-replay in
#   bin/ with a relative RPATH, and the CMake package lib/cmake/memfit/
#   (find_package(memfit CONFIG): memfit::memfit, memfit::memfit_plan, and
#   memfit::memfit_torch when built). The prefix can move: every path is relative.
# * Into a Python wheel (scikit-build-core, pyproject.toml, sets SKBUILD): the
#   libraries in memfit/_libs (where bindings/python/memfit/_lib.py looks), the
#   tools in the environment's bin (SKBUILD_SCRIPTS_DIR) with an RPATH to
#   memfit/_libs, and memfit-autoload.pth at the top of site-packages. No headers
#   and no CMake package there: the wheel is for Python.
include(CMakePackageConfigHelpers)

set(MEMFIT_INSTALL_LIBRARIES memfit memfit_plan)
if(TARGET memfit_torch)
  list(APPEND MEMFIT_INSTALL_LIBRARIES memfit_torch)
endif()
set(MEMFIT_INSTALL_TOOLS memfit-plan memfit-replay)

if(SKBUILD)
  set(MEMFIT_INSTALL_LIBRARY_DIR memfit/_libs) # relative to the prefix: the wheel's platlib
  set(MEMFIT_INSTALL_TOOL_DIR "${SKBUILD_SCRIPTS_DIR}")
  # Where bin/ ends up relative to site-packages depends on the install scheme
  # pip picks (venv or --user: ../lib/python3.X/site-packages; Debian's system
  # python: ../lib/python3.X/dist-packages or ../lib/python3/dist-packages;
  # --target: the target itself), which the wheel cannot know: the tools carry
  # one RPATH entry per scheme of the Python that builds the wheel, default first.
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c [=[
import os, sysconfig
default = getattr(sysconfig, "get_default_scheme", lambda: "posix_prefix")()  # 3.10+
names = [default, "venv", "posix_prefix", "posix_user", "posix_home", "posix_local", "deb_system"]
rels = []
for name in names:
    if name in sysconfig.get_scheme_names():
        paths = sysconfig.get_paths(name)
        rels.append(os.path.relpath(paths["platlib"], paths["scripts"]))
rels.append("..")
print(";".join(dict.fromkeys(rels)), end="")
]=]
    RESULT_VARIABLE _mf_rc OUTPUT_VARIABLE _mf_rels ERROR_VARIABLE _mf_err)
  if(NOT _mf_rc EQUAL 0 OR _mf_rels STREQUAL "")
    message(FATAL_ERROR "memfit: cannot ask ${Python_EXECUTABLE} where its scripts go: ${_mf_err}")
  endif()
  set(MEMFIT_TOOL_RPATH "")
  foreach(_rel IN LISTS _mf_rels)
    list(APPEND MEMFIT_TOOL_RPATH "$ORIGIN/${_rel}/${MEMFIT_INSTALL_LIBRARY_DIR}")
  endforeach()
  install(FILES ${PROJECT_SOURCE_DIR}/bindings/python/memfit-autoload.pth DESTINATION .)
else()
  set(MEMFIT_INSTALL_LIBRARY_DIR ${CMAKE_INSTALL_LIBDIR})
  set(MEMFIT_INSTALL_TOOL_DIR ${CMAKE_INSTALL_BINDIR})
  file(RELATIVE_PATH _mf_rel ${CMAKE_INSTALL_FULL_BINDIR} ${CMAKE_INSTALL_FULL_LIBDIR})
  set(MEMFIT_TOOL_RPATH "$ORIGIN/${_mf_rel}")
endif()

# libmemfit_plan (and libmemfit_torch, bindings/torch/) find libmemfit beside
# them; libraries linked from outside the project (jansson in a non-system
# prefix, torch's c10) stay found through USE_LINK_PATH.
set_target_properties(memfit_plan PROPERTIES INSTALL_RPATH "$ORIGIN")
set_target_properties(${MEMFIT_INSTALL_LIBRARIES} ${MEMFIT_INSTALL_TOOLS} PROPERTIES INSTALL_RPATH_USE_LINK_PATH ON)
set_target_properties(${MEMFIT_INSTALL_TOOLS} PROPERTIES INSTALL_RPATH "${MEMFIT_TOOL_RPATH}")

if(SKBUILD)
  install(TARGETS ${MEMFIT_INSTALL_LIBRARIES}
          LIBRARY DESTINATION ${MEMFIT_INSTALL_LIBRARY_DIR})
  install(TARGETS ${MEMFIT_INSTALL_TOOLS} RUNTIME DESTINATION ${MEMFIT_INSTALL_TOOL_DIR})
  return()
endif()

# A sanitized library needs the sanitizer runtimes first in the process: a
# program linking an installed one gets the same link flags through the
# exported targets.
if(MEMFIT_SANITIZE)
  foreach(_target IN LISTS MEMFIT_INSTALL_LIBRARIES)
    target_link_options(${_target} INTERFACE $<INSTALL_INTERFACE:-fsanitize=address,undefined>)
  endforeach()
endif()

set(MEMFIT_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/memfit)
install(TARGETS ${MEMFIT_INSTALL_LIBRARIES} EXPORT memfitTargets
        LIBRARY DESTINATION ${MEMFIT_INSTALL_LIBRARY_DIR})
install(TARGETS ${MEMFIT_INSTALL_TOOLS} RUNTIME DESTINATION ${MEMFIT_INSTALL_TOOL_DIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/allocator/include/memfit ${PROJECT_SOURCE_DIR}/planner/include/memfit
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} FILES_MATCHING PATTERN "*.h")
if(TARGET memfit_torch)
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/bindings/torch/include/memfit
          DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} FILES_MATCHING PATTERN "*.h")
endif()

install(EXPORT memfitTargets NAMESPACE memfit:: DESTINATION ${MEMFIT_CMAKE_DIR})
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/memfitConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/cmake/memfitConfig.cmake
                              INSTALL_DESTINATION ${MEMFIT_CMAKE_DIR})
# 0.x: a minor version may change the C API (MF_VERSION_MINOR).
write_basic_package_version_file(${PROJECT_BINARY_DIR}/cmake/memfitConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/cmake/memfitConfig.cmake ${PROJECT_BINARY_DIR}/cmake/memfitConfigVersion.cmake
        DESTINATION ${MEMFIT_CMAKE_DIR})
