/* fuzz_input.c — see fuzz_input.h. */
#define _GNU_SOURCE
#include "fuzz_input.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static int  g_fd = -1;
static char g_path[64];

const char * fuzz_input_path(const uint8_t * data, size_t size) {
    if (g_fd < 0) {
        g_fd = memfd_create("specee-fuzz-input", 0);
        if (g_fd < 0) {
            perror("memfd_create");
            abort();
        }
        snprintf(g_path, sizeof g_path, "/proc/self/fd/%d", g_fd);
    }
    /* the loaders open the path afresh, so only the content matters here */
    if (ftruncate(g_fd, 0) != 0 || pwrite(g_fd, data, size, 0) != (ssize_t) size) {
        perror("writing the fuzz input");
        abort();
    }
    return g_path;
}
