/*
 * fuzz_tokenizer_load.c — the tokenizer.json loader (worker/tokenizer/tokenizer.c and
 * the component parsers of tok_*.c) on arbitrary files: the bytes go to a
 * memfd, loaded by its /proc/self/fd path (a tokenizer.json named directly;
 * no tokenizer_config.json next to it).  A tokenizer that loads must then
 * encode and decode a few fixed texts with the properties of fuzz_tok.h.
 */
#include <unistd.h>

#include "tests/fuzz/fuzz_tok.h"

static const char *const texts[] = {
    "Hello world! It's 2024: naïve café, 日本語, emoji 🙂.",
    "  leading and trailing spaces  \n\tTabs\r\nand lines",
    "<s>special</s><|endoftext|><unk> [INST] x [/INST]",
    "12345 67.89 $%&*()_+-=[]{};':\",./<>?\\|`~",
    "",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 256 << 10) return 0;
    char path[64];
    int fd = fuzz_memfd(data, size, path, sizeof path);
    if (fd < 0) return 0;
    llmq_err err;
    llmq_err_clear(&err);
    tokenizer *t = tok_load(path, &err);
    close(fd);
    if (!t) {
        fuzz_check(err.msg[0], "refused without a message");
        return 0;
    }
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        fuzz_tok_check(t, texts[i], strlen(texts[i]), (int)(i & 1), (int)(i >> 1 & 1));
    for (int32_t id = -1; id <= 300 && id < tok_vocab_size(t) + 2; id++) {
        size_t len = 0;
        const char *s = tok_id_to_token(t, id, &len);
        if (s) fuzz_check(tok_token_to_id(t, s, len) >= 0, "token %d has a string that maps to no id", id);
    }
    tok_destroy(t);
    return 0;
}
