/* REQUIRE(cond): a promise a fuzz target checks; a broken one is reported by its text and
 * aborts, which libFuzzer records as a crash with the input. */
#ifndef VD_FUZZ_REQUIRE_H
#define VD_FUZZ_REQUIRE_H

#include <stdio.h>
#include <stdlib.h>

#define REQUIRE(cond)                                                                   \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "%s:%d: broken promise: %s\n", __FILE__, __LINE__, #cond);  \
            abort();                                                                    \
        }                                                                               \
    } while (0)

#endif
