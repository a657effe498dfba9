/* fuzz_input.h — hands a fuzz input to libspecee's path-based loaders. */
#ifndef SPECEE_FUZZ_INPUT_H
#define SPECEE_FUZZ_INPUT_H

#include <stddef.h>
#include <stdint.h>

/* Writes `data` to an in-memory file (memfd, no disk I/O) and returns a path
 * that opens it ("/proc/self/fd/N"). The same file is reused for every input;
 * the path stays valid for the life of the process. Aborts if the kernel
 * refuses the memfd: the fuzz target cannot run at all then. */
const char * fuzz_input_path(const uint8_t * data, size_t size);

#endif
