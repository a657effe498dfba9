# ggml built from source: the copy inside the llama-cpp-python source
# distribution on PyPI (ggml 0.25.3, the ggml that llama.cpp 0.3.36 ships and
# that the project's llama.cpp comparisons are measured against).
#
# SPECEE_GGML_SOURCE_DIR may point at an unpacked ggml tree; otherwise the
# sdist is fetched with pip (checked by sha256) into the build directory.

set(SPECEE_LLAMA_CPP_PYTHON_VERSION "0.3.36")
set(SPECEE_LLAMA_CPP_PYTHON_SHA256 "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e")
set(SPECEE_GGML_SOURCE_DIR "" CACHE PATH "an unpacked ggml source tree (default: fetch it from PyPI)")

if (NOT SPECEE_GGML_SOURCE_DIR)
    set(_sdist_dir "${CMAKE_BINARY_DIR}/_ggml_sdist")
    set(_sdist "${_sdist_dir}/llama_cpp_python-${SPECEE_LLAMA_CPP_PYTHON_VERSION}.tar.gz")
    if (NOT EXISTS "${_sdist}")
        find_package(Python REQUIRED COMPONENTS Interpreter)
        message(STATUS "specee: fetching llama-cpp-python==${SPECEE_LLAMA_CPP_PYTHON_VERSION} sdist for its ggml")
        execute_process(
            COMMAND "${Python_EXECUTABLE}" -m pip download --no-deps --no-binary :all: --no-build-isolation
                    "llama-cpp-python==${SPECEE_LLAMA_CPP_PYTHON_VERSION}" -d "${_sdist_dir}"
            RESULT_VARIABLE _rc)
        if (NOT _rc EQUAL 0 OR NOT EXISTS "${_sdist}")
            message(FATAL_ERROR "specee: could not download the llama-cpp-python sdist")
        endif()
    endif()
    file(SHA256 "${_sdist}" _sha)
    if (NOT _sha STREQUAL SPECEE_LLAMA_CPP_PYTHON_SHA256)
        message(FATAL_ERROR "specee: ${_sdist} has sha256 ${_sha}, expected ${SPECEE_LLAMA_CPP_PYTHON_SHA256}")
    endif()
    set(_root "${_sdist_dir}/llama_cpp_python-${SPECEE_LLAMA_CPP_PYTHON_VERSION}")
    if (NOT EXISTS "${_root}/vendor/llama.cpp/ggml/CMakeLists.txt")
        file(ARCHIVE_EXTRACT INPUT "${_sdist}" DESTINATION "${_sdist_dir}")
    endif()
    set(SPECEE_GGML_SOURCE_DIR "${_root}/vendor/llama.cpp/ggml" CACHE PATH "" FORCE)
endif()

set(GGML_NATIVE ON CACHE BOOL "" FORCE)
set(GGML_BUILD_TESTS OFF CACHE BOOL "" FORCE)
set(GGML_BUILD_EXAMPLES OFF CACHE BOOL "" FORCE)
# ggml's own thread pool, not OpenMP (llama.cpp's default): measured on SmolLM2
# decode (2 threads, alternated), an OpenMP build computed each step 2-8% slower.
set(GGML_OPENMP OFF CACHE BOOL "" FORCE)
# llama.cpp's top-level CMake turns llamafile's sgemm on (ggml's own default
# is off); it changes how prompt-sized matrix products round, so greedy output
# matches llama.cpp only with it on.
set(GGML_LLAMAFILE ON CACHE BOOL "" FORCE)
# ggml's RPC backend: layers on other machines (specee rpc-server, --rpc)
set(GGML_RPC ON CACHE BOOL "" FORCE)
# CUDA: -C cmake.define.SPECEE_CUDA=ON (needs the CUDA toolkit)
option(SPECEE_CUDA "build ggml's CUDA backend (GPU offload with n_gpu_layers)" OFF)
set(GGML_CUDA ${SPECEE_CUDA} CACHE BOOL "" FORCE)
set(BUILD_SHARED_LIBS ON)
include(${CMAKE_CURRENT_LIST_DIR}/ggml_patches.cmake)
specee_apply_ggml_patches("${SPECEE_GGML_SOURCE_DIR}")
add_subdirectory("${SPECEE_GGML_SOURCE_DIR}" ggml EXCLUDE_FROM_ALL)

# The ggml libraries travel inside the Python package, next to libspecee.so.
set(_specee_ggml_libs ggml ggml-base ggml-cpu ggml-rpc)
if (SPECEE_CUDA)
    list(APPEND _specee_ggml_libs ggml-cuda)
endif()
set_target_properties(${_specee_ggml_libs} PROPERTIES INSTALL_RPATH "$ORIGIN")
install(TARGETS ${_specee_ggml_libs} LIBRARY DESTINATION specee)

# the names the wheel's CMake config exports
foreach (_t ggml-base ggml-cpu)
    if (NOT TARGET ggml::${_t})
        add_library(ggml::${_t} ALIAS ${_t})
    endif()
endforeach()
