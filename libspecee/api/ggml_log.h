// ggml_log.h — routes ggml's log output.
//
// ggml prints errors (a malformed GGUF, say) through a global callback. We
// silence its info/debug chatter and, while a log_capture is alive on the
// calling thread, collect warnings and errors so they can go into the error
// message that the caller sees.
#pragma once

#include <string>

namespace specee {

void install_ggml_log();

class log_capture {
public:
    log_capture();
    ~log_capture();
    log_capture(const log_capture &) = delete;
    log_capture & operator=(const log_capture &) = delete;

    // Captured text with newlines folded to "; ", or "" if none.
    std::string text() const;

private:
    std::string   buf_;
    log_capture * prev_;
};

} // namespace specee
