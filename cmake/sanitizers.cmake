# Instrumented builds of libspecee for hardening (see README, "Hardening").
#
#   SPECEE_SANITIZE=ON  AddressSanitizer + UndefinedBehaviorSanitizer in
#                       libspecee (ggml stays uninstrumented). Any finding
#                       aborts the process, so a test run either passes clean
#                       or fails. With GCC the library needs libasan first in
#                       the process: a Python host must run with
#                       LD_PRELOAD=$(gcc -print-file-name=libasan.so).
#   SPECEE_FUZZ=ON      (clang only; implies SPECEE_SANITIZE) adds libFuzzer
#                       coverage to libspecee and builds the fuzz targets of
#                       tests/fuzz/, which link libFuzzer's own main.
#
# Included after the `specee` target is defined.

option(SPECEE_SANITIZE "Build libspecee with AddressSanitizer and UndefinedBehaviorSanitizer" OFF)
option(SPECEE_FUZZ "Build the libFuzzer targets in tests/fuzz (needs clang)" OFF)

if (SPECEE_FUZZ)
    if (NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang" OR NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
        message(FATAL_ERROR "SPECEE_FUZZ needs clang (libFuzzer): configure with "
                            "-DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++")
    endif()
    set(SPECEE_SANITIZE ON)
endif()

if (SPECEE_SANITIZE)
    set(SPECEE_SANITIZER_FLAGS -fsanitize=address,undefined -fno-sanitize-recover=all)
    target_compile_options(specee PRIVATE ${SPECEE_SANITIZER_FLAGS} -fno-omit-frame-pointer
                           # bounds checks in std::vector/std::string operator[] as well
                           -D_GLIBCXX_ASSERTIONS)
    if (SPECEE_FUZZ)
        # clang links the sanitizer runtimes into the executable (the fuzz
        # target), never into a shared library.
        target_compile_options(specee PRIVATE -fsanitize=fuzzer-no-link)
    else()
        target_link_options(specee PRIVATE ${SPECEE_SANITIZER_FLAGS})
    endif()
endif()

if (SPECEE_FUZZ)
    foreach (target fuzz_model_load fuzz_heads_load)
        add_executable(${target} tests/fuzz/${target}.c tests/fuzz/fuzz_input.c)
        target_compile_options(${target} PRIVATE -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all)
        target_link_options(${target} PRIVATE -fsanitize=fuzzer,address,undefined)
        target_link_libraries(${target} PRIVATE specee)
        # linked as C++ so that clang adds UBSan's C++ runtime (vptr checks in
        # libspecee); run from the build tree, next to libspecee.so
        set_target_properties(${target} PROPERTIES LINKER_LANGUAGE CXX
                              BUILD_RPATH "$<TARGET_FILE_DIR:specee>")
    endforeach()
endif()
