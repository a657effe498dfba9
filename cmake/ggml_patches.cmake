# specee's changes to ggml: a short patch series (cmake/ggml-patches/*.patch,
# each saying why in its header, listed in docs/ggml-patches.md), applied to
# the unpacked ggml tree at configure time the way ollama carries its
# llama.cpp patches: a patch applies if `git apply --check` passes, is skipped
# if the reverse check shows it is already in, and stops the build otherwise
# (a ggml that moved under the patch must be looked at, not built around).
#
# -DSPECEE_GGML_PATCHES=OFF builds ggml as shipped (then a lost RPC server
# aborts the process, as it does in llama.cpp).

option(SPECEE_GGML_PATCHES "apply cmake/ggml-patches/*.patch to ggml" ON)

function(specee_apply_ggml_patches ggml_dir)
    file(GLOB _patches "${CMAKE_CURRENT_FUNCTION_LIST_DIR}/ggml-patches/*.patch")
    list(SORT _patches)
    set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${_patches})
    if (NOT SPECEE_GGML_PATCHES)
        message(STATUS "specee: ggml built without specee's patches (SPECEE_GGML_PATCHES=OFF)")
        return()
    endif()
    find_package(Git QUIET)
    if (NOT GIT_EXECUTABLE)
        message(FATAL_ERROR "specee: git is needed to apply cmake/ggml-patches to ggml "
                            "(or configure with -DSPECEE_GGML_PATCHES=OFF)")
    endif()
    # the unpacked tree may lie inside some git work tree (a build folder in a
    # checkout): stop git from finding it, so paths are the patch's own
    get_filename_component(_parent "${ggml_dir}" DIRECTORY)
    set(_git ${CMAKE_COMMAND} -E env "GIT_CEILING_DIRECTORIES=${_parent}" ${GIT_EXECUTABLE} apply)
    foreach (_patch ${_patches})
        get_filename_component(_name "${_patch}" NAME)
        execute_process(COMMAND ${_git} --check "${_patch}" WORKING_DIRECTORY "${ggml_dir}"
                        RESULT_VARIABLE _fits OUTPUT_QUIET ERROR_QUIET)
        if (_fits EQUAL 0)
            execute_process(COMMAND ${_git} "${_patch}" WORKING_DIRECTORY "${ggml_dir}"
                            RESULT_VARIABLE _rc ERROR_VARIABLE _err)
            if (NOT _rc EQUAL 0)
                message(FATAL_ERROR "specee: applying ${_name} to ${ggml_dir} failed: ${_err}")
            endif()
            message(STATUS "specee: ggml patch ${_name} applied")
            continue()
        endif()
        execute_process(COMMAND ${_git} --reverse --check "${_patch}" WORKING_DIRECTORY "${ggml_dir}"
                        RESULT_VARIABLE _applied OUTPUT_QUIET ERROR_QUIET)
        if (_applied EQUAL 0)
            message(STATUS "specee: ggml patch ${_name} already applied")
        else()
            message(FATAL_ERROR "specee: ${_name} neither applies to ${ggml_dir} nor is in it: "
                                "the ggml there is not the pinned one, or was changed by hand")
        endif()
    endforeach()
endfunction()
