# SPDX-License-Identifier: Apache-2.0
# Warnings, sanitizers and the debug level, applied to every headpage target.

function(headpage_configure_target target)
  target_compile_features(${target} PUBLIC cxx_std_17)
  target_compile_definitions(${target} PUBLIC HEADPAGE_DEBUG_LEVEL=${HEADPAGE_DEBUG_LEVEL})
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall>)
  if(HEADPAGE_SANITIZE)
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=${HEADPAGE_SANITIZE} -fno-omit-frame-pointer
      -fno-sanitize-recover=all>)
    target_link_options(${target} PUBLIC -fsanitize=${HEADPAGE_SANITIZE})
  endif()
endfunction()

# headpage_library(NAME SOURCES... DEPS...): one library target per part, named
# headpage_<part> with the alias headpage::<part>. Include paths are rooted at the
# repository root, so a header is always included as "part/file.h".
function(headpage_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;PUBLIC_DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(headpage_${name} STATIC ${ARG_SOURCES})
  add_library(headpage::${name} ALIAS headpage_${name})
  target_include_directories(headpage_${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(headpage_${name} PUBLIC ${ARG_PUBLIC_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  set_target_properties(headpage_${name} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  headpage_configure_target(headpage_${name})
endfunction()
