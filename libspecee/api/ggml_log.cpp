#include "api/ggml_log.h"

#include "ggml.h"

#include <cstdio>
#include <cstdlib>
#include <mutex>

namespace specee {

static thread_local std::string * t_capture = nullptr;
static thread_local log_capture * t_capture_owner = nullptr;

static void log_callback(ggml_log_level level, const char * text, void * /*user*/) {
    static const bool verbose = std::getenv("SPECEE_VERBOSE") != nullptr;
    if (t_capture != nullptr) {
        if (level == GGML_LOG_LEVEL_ERROR || level == GGML_LOG_LEVEL_WARN || level == GGML_LOG_LEVEL_CONT) {
            *t_capture += text;
        }
        if (!verbose) {
            return;
        }
    }
    if (verbose || level == GGML_LOG_LEVEL_ERROR || level == GGML_LOG_LEVEL_WARN) {
        std::fputs(text, stderr);
    }
}

void install_ggml_log() {
    static std::once_flag once;
    std::call_once(once, [] { ggml_log_set(log_callback, nullptr); });
}

log_capture::log_capture() : prev_(t_capture_owner) {
    install_ggml_log();
    t_capture_owner = this;
    t_capture = &buf_;
}

log_capture::~log_capture() {
    t_capture_owner = prev_;
    t_capture = prev_ ? &prev_->buf_ : nullptr;
}

std::string log_capture::text() const {
    std::string out;
    for (char c : buf_) {
        if (c == '\n') {
            if (!out.empty() && out.back() != ' ') {
                out += "; ";
            }
        } else {
            out += c;
        }
    }
    while (!out.empty() && (out.back() == ' ' || out.back() == ';')) {
        out.pop_back();
    }
    return out;
}

} // namespace specee
