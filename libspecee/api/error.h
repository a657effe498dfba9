// error.h — how failures travel inside libspecee.
//
// Internal code throws specee::error(status, message); the C API shim
// (api.cpp) catches it at the boundary and turns it into a status code plus a
// per-context message. Nothing inside the library calls exit() or abort() on
// bad input.
#pragma once

#include "specee.h"

#include <cstdarg>
#include <stdexcept>
#include <string>

namespace specee {

struct error : std::runtime_error {
    specee_status status;
    error(specee_status s, const std::string & msg) : std::runtime_error(msg), status(s) {}
};

// printf-style message builder.
std::string format(const char * fmt, ...) __attribute__((format(printf, 1, 2)));

[[noreturn]] void fail(specee_status status, const char * fmt, ...) __attribute__((format(printf, 2, 3)));

} // namespace specee
