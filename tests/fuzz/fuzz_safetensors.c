/*
 * fuzz_safetensors.c — the safetensors header parser and validator
 * (worker/model/safetensors.c, st_open_file) on arbitrary files.  The bytes are
 * written to a memfd and opened by its /proc/self/fd path, so the real
 * open + mmap path runs.
 *
 * Invariants besides "no crash, no UB": for every tensor of a file that
 * opened, an independent reading of the header (jansson, here) agrees:
 * data_offsets lie inside the data section, the tensor's bytes are exactly
 * those of the file at 8 + header length + begin, nbytes = end - begin =
 * shape product x dtype size, and st_find finds it by name.
 */
#include <jansson.h>
#include <string.h>
#include <unistd.h>

#include "tests/fuzz/fuzz.h"
#include "worker/model/safetensors.h"

static size_t dtype_size(const char *s) {
    static const struct { const char *n; size_t sz; } t[] = {
        {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"F64", 8}, {"I64", 8}, {"I32", 4}, {"I16", 2},
        {"I8", 1},  {"U8", 1},  {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (!strcmp(s, t[i].n)) return t[i].sz;
    return 0;
}

static void check_set(const st_set *s, const uint8_t *data, size_t size) {
    fuzz_check(size >= 8, "opened a %zu-byte file", size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | data[i];
    fuzz_check(hlen <= size - 8, "header length %llu past the file", (unsigned long long)hlen);
    const uint8_t *dsec = data + 8 + hlen;
    const size_t dsize = size - 8 - (size_t)hlen;
    json_t *root = json_loadb((const char *)data + 8, (size_t)hlen, 0, NULL);
    fuzz_check(json_is_object(root), "opened a file whose header is not a JSON object");
    for (size_t i = 0; i < st_count(s); i++) {
        const st_tensor *t = st_at(s, i);
        fuzz_check(t && t->name && st_find(s, t->name) == t, "tensor %zu not found by its name", i);
        json_t *e = json_object_get(root, t->name);
        json_t *off = json_object_get(e, "data_offsets");
        fuzz_check(json_is_array(off) && json_array_size(off) == 2, "tensor '%s': no data_offsets", t->name);
        json_int_t b = json_integer_value(json_array_get(off, 0)), en = json_integer_value(json_array_get(off, 1));
        fuzz_check(b >= 0 && b <= en && (uint64_t)en <= dsize, "tensor '%s': [%lld, %lld) outside %zu data bytes",
                   t->name, (long long)b, (long long)en, dsize);
        fuzz_check(t->nbytes == (size_t)(en - b), "tensor '%s': nbytes %zu != %lld", t->name, t->nbytes,
                   (long long)(en - b));
        fuzz_check(!t->nbytes || !memcmp(t->data, dsec + b, t->nbytes), "tensor '%s': data is not the file's bytes",
                   t->name);
        size_t es = dtype_size(t->dtype_name);
        fuzz_check(es, "tensor '%s': dtype '%s' accepted", t->name, t->dtype_name);
        fuzz_check(t->ndim >= 0 && t->ndim <= ST_MAX_DIMS, "tensor '%s': %d dims", t->name, t->ndim);
        unsigned __int128 n = es;
        for (int d = 0; d < t->ndim; d++) n *= (unsigned __int128)(uint64_t)t->shape[d];
        fuzz_check(n == t->nbytes, "tensor '%s': shape x dtype != %zu bytes", t->name, t->nbytes);
    }
    json_decref(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    int fd = fuzz_memfd(data, size, path, sizeof path);
    if (fd < 0) return 0;
    st_set *s = NULL;
    llmq_err err;
    llmq_err_clear(&err);
    if (st_open_file(&s, path, &err) == LLMQ_OK) {
        check_set(s, data, size);
        st_close(s);
    } else {
        fuzz_check(!s && err.msg[0], "refused without a message");
    }
    close(fd);
    return 0;
}
