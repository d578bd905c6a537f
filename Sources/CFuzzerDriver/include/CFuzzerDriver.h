#ifndef SWITCHYARD_C_FUZZER_DRIVER_H
#define SWITCHYARD_C_FUZZER_DRIVER_H
#include <stddef.h>
#include <stdint.h>

// libFuzzer's entry point for programs that keep their own `main` (SwiftPM gives every executable one); linked only
// in fuzzing builds (`-sanitize=fuzzer`), called only under `#if FUZZING`.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
