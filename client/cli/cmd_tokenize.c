/*
 * cmd_tokenize.c — `llmq tokenize` and `llmq detokenize`: the model's tokenizer
 * on the command line, offline.  Works on any folder holding tokenizer.json (and
 * optionally tokenizer_config.json), no weights needed.
 *
 *   llmq tokenize   --model DIR (--text T | --file PATH | --batch) [--no-special] [--json]
 *   llmq detokenize --model DIR --ids 1,2,3 [--skip-special] [--json]
 *
 * --batch reads one JSON string per line on stdin and writes one JSON object per
 * line (used by tests and benchmarks to avoid a process per text).
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "client/cli/cli.h"
#include "worker/tokenizer/tokenizer.h"

static void tokenize_usage(FILE *f) {
    fprintf(f,
            "usage: llmq tokenize --model DIR (--text T | --file PATH | --batch) [options]\n"
            "  --model DIR      folder with tokenizer.json (or the tokenizer.json itself)\n"
            "  --text T         the text to encode\n"
            "  --file PATH      encode the bytes of a file ('-' = stdin)\n"
            "  --batch          stdin: one JSON string per line; stdout: one JSON object per line\n"
            "  --no-special     do not add BOS/EOS (special-token text is still matched)\n"
            "  --json           {\"ids\": [...], \"tokens\": [...]} instead of 'id<TAB>token' lines\n");
}

static void detokenize_usage(FILE *f) {
    fprintf(f,
            "usage: llmq detokenize --model DIR --ids 1,2,3 [options]\n"
            "  --model DIR      folder with tokenizer.json (or the tokenizer.json itself)\n"
            "  --ids LIST       comma-separated token ids\n"
            "  --skip-special   drop special tokens (BOS, EOS, ...) from the text\n"
            "  --json           {\"text\": ...} instead of the raw text\n");
}

static char *read_all(FILE *f, size_t *len) {
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    if (!buf) return NULL;
    for (;;) {
        if (n == cap) {
            char *p = realloc(buf, cap *= 2);
            if (!p) { free(buf); return NULL; }
            buf = p;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    *len = n;
    return buf;
}

/* Print a token string with control characters escaped, for terminals. */
static void print_escaped(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n') fputs("\\n", stdout);
        else if (c == '\t') fputs("\\t", stdout);
        else if (c == '\\') fputs("\\\\", stdout);
        else if (c < 0x20 || c == 0x7F) printf("\\x%02x", c);
        else putchar(c);
    }
}

static json_t *encoding_json(const tokenizer *t, const int32_t *ids, size_t n) {
    json_t *o = json_object(), *ja = json_array(), *ta = json_array();
    for (size_t i = 0; i < n; i++) {
        size_t len = 0;
        const char *s = tok_id_to_token(t, ids[i], &len);
        json_array_append_new(ja, json_integer(ids[i]));
        json_array_append_new(ta, s ? json_stringn(s, len) : json_null());
    }
    json_object_set_new(o, "ids", ja);
    json_object_set_new(o, "tokens", ta);
    return o;
}

static int print_json(json_t *o) {
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!s) return 1;
    puts(s);
    free(s);
    return 0;
}

static int run_batch(const tokenizer *t, int add_special) {
    char *line = NULL;
    size_t cap = 0;
    ssize_t r;
    int rc = 0;
    while ((r = getline(&line, &cap, stdin)) > 0) {
        json_error_t je;
        json_t *v = json_loadb(line, (size_t)r, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
        if (!json_is_string(v)) {
            fprintf(stderr, "llmq tokenize --batch: each line must be a JSON string (%s)\n",
                    v ? "got another type" : je.text);
            json_decref(v);
            rc = 2;
            break;
        }
        int32_t *ids;
        size_t n;
        llmq_err err = {0};
        json_t *o;
        if (tok_encode(t, json_string_value(v), json_string_length(v), add_special, &ids, &n, &err)) {
            o = json_pack("{s:s}", "error", err.msg);
        } else {
            o = encoding_json(t, ids, n);
            free(ids);
        }
        json_decref(v);
        if (print_json(o)) { rc = 1; break; }
    }
    free(line);
    fflush(stdout);
    return rc;
}

int cmd_tokenize(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'}, {"text", required_argument, NULL, 't'},
        {"file", required_argument, NULL, 'f'},  {"batch", no_argument, NULL, 'b'},
        {"no-special", no_argument, NULL, 'n'},  {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0},
    };
    const char *model = NULL, *text = NULL, *file = NULL;
    int batch = 0, add_special = 1, json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 't': text = optarg; break;
        case 'f': file = optarg; break;
        case 'b': batch = 1; break;
        case 'n': add_special = 0; break;
        case 'j': json = 1; break;
        case 'h': tokenize_usage(stdout); return 0;
        default: tokenize_usage(stderr); return 2;
        }
    }
    if (!model || (!!text + !!file + batch) != 1 || optind < argc) {
        fprintf(stderr, "llmq tokenize: need --model and exactly one of --text, --file, --batch\n");
        tokenize_usage(stderr);
        return 2;
    }
    llmq_err err = {0};
    tokenizer *t = tok_load(model, &err);
    if (!t) {
        fprintf(stderr, "llmq tokenize: %s\n", err.msg);
        return 1;
    }
    if (batch) {
        int rc = run_batch(t, add_special);
        tok_destroy(t);
        return rc;
    }
    char *owned = NULL;
    size_t len;
    if (file) {
        FILE *f = strcmp(file, "-") ? fopen(file, "rb") : stdin;
        if (!f) {
            fprintf(stderr, "llmq tokenize: %s: %s\n", file, strerror(errno));
            tok_destroy(t);
            return 1;
        }
        owned = read_all(f, &len);
        if (f != stdin) fclose(f);
        if (!owned) {
            fprintf(stderr, "llmq tokenize: out of memory reading %s\n", file);
            tok_destroy(t);
            return 1;
        }
        text = owned;
    } else {
        len = strlen(text);
    }
    int32_t *ids;
    size_t n;
    int rc = 0;
    if (tok_encode(t, text, len, add_special, &ids, &n, &err)) {
        fprintf(stderr, "llmq tokenize: %s\n", err.msg);
        rc = 1;
    } else {
        if (json) {
            rc = print_json(encoding_json(t, ids, n));
        } else {
            for (size_t i = 0; i < n; i++) {
                size_t tl = 0;
                const char *s = tok_id_to_token(t, ids[i], &tl);
                printf("%d\t", ids[i]);
                print_escaped(s ? s : "", tl);
                putchar('\n');
            }
        }
        free(ids);
    }
    free(owned);
    tok_destroy(t);
    return rc;
}

static int parse_id_list(const char *arg, int32_t **out, size_t *n) {
    size_t cap = 16, len = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) return -1;
    const char *p = arg;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX) { free(ids); return -1; }
        if (len == cap) {
            int32_t *g = realloc(ids, (cap *= 2) * sizeof *ids);
            if (!g) { free(ids); return -1; }
            ids = g;
        }
        ids[len++] = (int32_t)v;
        p = end;
        while (*p == ' ') p++;
        if (*p == ',') p++;
        else if (*p) { free(ids); return -1; }
    }
    *out = ids;
    *n = len;
    return 0;
}

int cmd_detokenize(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'}, {"ids", required_argument, NULL, 'i'},
        {"skip-special", no_argument, NULL, 's'}, {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    const char *model = NULL, *list = NULL;
    int skip = 0, json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'i': list = optarg; break;
        case 's': skip = 1; break;
        case 'j': json = 1; break;
        case 'h': detokenize_usage(stdout); return 0;
        default: detokenize_usage(stderr); return 2;
        }
    }
    int32_t *ids;
    size_t n;
    if (!model || !list || optind < argc) {
        fprintf(stderr, "llmq detokenize: need --model and --ids\n");
        detokenize_usage(stderr);
        return 2;
    }
    if (parse_id_list(list, &ids, &n)) {
        fprintf(stderr, "llmq detokenize: --ids must be comma-separated non-negative integers\n");
        return 2;
    }
    llmq_err err = {0};
    tokenizer *t = tok_load(model, &err);
    if (!t) {
        fprintf(stderr, "llmq detokenize: %s\n", err.msg);
        free(ids);
        return 1;
    }
    int rc = 0;
    tok_text text = {0};
    if (tok_decode_append(t, ids, n, skip, &text)) {
        fprintf(stderr, "llmq detokenize: out of memory\n");
        rc = 1;
    } else if (json) {
        json_t *o = json_object();
        json_object_set_new(o, "text", json_stringn(text.data, text.len));
        rc = print_json(o);
    } else {
        fwrite(text.data, 1, text.len, stdout);
        putchar('\n');
    }
    tok_text_deinit(&text);
    free(ids);
    tok_destroy(t);
    return rc;
}
