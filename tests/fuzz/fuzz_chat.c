/*
 * fuzz_chat.c — chat template rendering (worker/tokenizer/chat.c) on arbitrary
 * messages, and family detection on arbitrary Jinja text.
 *
 * Input: byte 0 picks the family (mod 6; 0 = detect it from the Jinja part),
 * byte 1 bit 0 is add_generation_prompt; the rest is split at NUL bytes into
 * bos, eos, default system message (empty = none), Jinja text, then role and
 * content of each message (at most 64), as a request's messages arrive.
 *
 * Invariants besides "no crash, no leak, no UB": a render that succeeds
 * returns a NUL-terminated string of exactly *len bytes; a failure has a
 * message and returns nothing.
 */
#include <string.h>

#include "tests/fuzz/fuzz.h"
#include "worker/tokenizer/chat.h"

#define MAX_PARTS (4 + 2 * 64)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2 || size > 64 << 10) return 0;
    char *buf = malloc(size - 2 + 1);
    if (!buf) return 0;
    memcpy(buf, data + 2, size - 2);
    buf[size - 2] = '\0';
    const char *parts[MAX_PARTS];
    size_t np = 0;
    for (char *p = buf; np < MAX_PARTS;) {
        parts[np++] = p;
        char *z = memchr(p, '\0', (size_t)(buf + size - 2 - p));
        if (!z || z == buf + size - 2) break;
        p = z + 1;
    }
    static const chat_family fams[6] = {CHAT_UNKNOWN, CHAT_LLAMA2, CHAT_LLAMA3, CHAT_MISTRAL, CHAT_CHATML, CHAT_ZEPHYR};
    chat_family f = fams[data[0] % 6];
    const char *jinja = np > 3 ? parts[3] : "";
    chat_family detected = chat_family_detect(jinja);
    fuzz_check(detected >= CHAT_UNKNOWN && detected <= CHAT_ZEPHYR, "family %d", detected);
    if (f == CHAT_UNKNOWN) f = detected;
    chat_template ct;
    memset(&ct, 0, sizeof ct);
    if (f != CHAT_UNKNOWN &&
        chat_template_init(&ct, f, np > 0 ? parts[0] : NULL, np > 1 ? parts[1] : NULL,
                           np > 2 && parts[2][0] ? parts[2] : NULL) == LLMQ_OK) {
        chat_msg msgs[64];
        size_t n = 0;
        for (size_t i = 4; i + 1 < np && n < 64; i += 2) msgs[n++] = (chat_msg){parts[i], parts[i + 1], NULL};
        char *out = NULL;
        size_t len = 0;
        llmq_err err;
        llmq_err_clear(&err);
        if (chat_render(&ct, msgs, n, data[1] & 1, &out, &len, &err) == LLMQ_OK) {
            fuzz_check(out && strlen(out) == len, "rendered %zu bytes but said %zu", out ? strlen(out) : 0, len);
        } else {
            fuzz_check(err.msg[0], "render failed without a message");
        }
        free(out);
        chat_template_deinit(&ct);
    }
    free(buf);
    return 0;
}
