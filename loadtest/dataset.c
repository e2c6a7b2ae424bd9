/* dataset.c — prompts from a ShareGPT or custom JSON/JSONL file (see dataset.h). */
#include "loadtest/dataset.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- records */

/* A turn's speaker and text: ShareGPT's from/value or OpenAI's role/content. */
static const char *turn_text(const json_t *turn, int *human) {
    const json_t *who = json_object_get(turn, "from");
    const json_t *txt = json_object_get(turn, "value");
    if (!who) who = json_object_get(turn, "role");
    if (!txt) txt = json_object_get(turn, "content");
    if (!json_is_string(who) || !json_is_string(txt)) return NULL;
    *human = !strcmp(json_string_value(who), "human") || !strcmp(json_string_value(who), "user");
    return json_string_value(txt);
}

/* The prompt of one record, or NULL when it has none. */
static const char *record_prompt(const json_t *rec, int sharegpt) {
    if (!sharegpt) {
        const json_t *p = json_object_get(rec, "prompt");
        return json_is_string(p) && json_string_length(p) ? json_string_value(p) : NULL;
    }
    const json_t *conv = json_object_get(rec, "conversations");
    size_t i;
    const json_t *turn;
    json_array_foreach(conv, i, turn) {
        int human = 0;
        const char *t = turn_text(turn, &human);
        if (t && human && t[0]) return t;
    }
    return NULL;
}

static llmq_status add_record(lt_dataset *d, size_t *cap, const json_t *rec, int sharegpt) {
    const char *p = record_prompt(rec, sharegpt);
    if (!p) {
        d->skipped++;
        return LLMQ_OK;
    }
    if (d->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 256;
        char **np = realloc(d->prompts, nc * sizeof *np);
        if (!np) return LLMQ_ERR_NOMEM;
        d->prompts = np;
        *cap = nc;
    }
    if (!(d->prompts[d->n] = strdup(p))) return LLMQ_ERR_NOMEM;
    d->n++;
    return LLMQ_OK;
}

/* ---------------------------------------------------------------- files */

static char *read_all(const char *path, size_t *len, llmq_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        llmq_err_set(err, LLMQ_ERR_IO, "%s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        char *nb = realloc(buf, cap * 2);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf) {
        llmq_err_set(err, LLMQ_ERR_NOMEM, "%s: out of memory", path);
        return NULL;
    }
    if (bad) {
        free(buf);
        llmq_err_set(err, LLMQ_ERR_IO, "%s: read error", path);
        return NULL;
    }
    *len = n;
    return buf;
}

llmq_status lt_dataset_load(lt_dataset *d, const char *name, const char *path, llmq_err *err) {
    memset(d, 0, sizeof *d);
    int sharegpt = !strcmp(name, "sharegpt");
    if (!sharegpt && strcmp(name, "custom"))
        return llmq_err_set(err, LLMQ_ERR_INVALID, "unknown dataset '%s' (random, sharegpt or custom)", name);
    size_t len, cap = 0;
    char *buf = read_all(path, &len, err);
    if (!buf) return err->code;
    llmq_status st = LLMQ_OK;
    size_t i = 0;
    while (i < len && strchr(" \t\r\n", buf[i])) i++;
    json_error_t je;
    if (i < len && buf[i] == '[') { /* one JSON array of records */
        json_t *arr = json_loadb(buf, len, 0, &je);
        if (!json_is_array(arr)) {
            st = llmq_err_set(err, LLMQ_ERR_INVALID, "%s: not a JSON array: %s (line %d)", path, je.text, je.line);
        } else {
            size_t k;
            json_t *rec;
            json_array_foreach(arr, k, rec) if (st == LLMQ_OK) st = add_record(d, &cap, rec, sharegpt);
        }
        json_decref(arr);
    } else { /* JSONL */
        int line = 0;
        for (size_t s = 0; s < len && st == LLMQ_OK;) {
            size_t e = s;
            while (e < len && buf[e] != '\n') e++;
            line++;
            size_t a = s;
            while (a < e && strchr(" \t\r", buf[a])) a++;
            if (a < e) {
                json_t *rec = json_loadb(buf + a, e - a, 0, &je);
                if (!json_is_object(rec))
                    st = llmq_err_set(err, LLMQ_ERR_INVALID, "%s:%d: not a JSON object: %s", path, line, je.text);
                else
                    st = add_record(d, &cap, rec, sharegpt);
                json_decref(rec);
            }
            s = e + 1;
        }
    }
    free(buf);
    if (st == LLMQ_ERR_NOMEM) llmq_err_set(err, st, "%s: out of memory", path);
    if (st == LLMQ_OK && d->n == 0)
        st = llmq_err_set(err, LLMQ_ERR_INVALID, "%s: no prompt in it (%s layout: %s)", path, name,
                          sharegpt ? "\"conversations\" with a human turn" : "\"prompt\" strings");
    if (st != LLMQ_OK) lt_dataset_deinit(d);
    return st;
}

void lt_dataset_deinit(lt_dataset *d) {
    if (!d) return;
    for (size_t i = 0; i < d->n; i++) free(d->prompts[i]);
    free(d->prompts);
    memset(d, 0, sizeof *d);
}

/* ---------------------------------------------------------------- random text */

/* Short, frequent words: about one token each in common vocabularies. */
static const char *const WORDS[64] = {
    "the",  "of",    "and",   "to",   "in",    "is",    "it",    "that",  "was",  "for",   "on",   "are",  "with",
    "as",   "his",   "they",  "be",   "at",    "one",   "have",  "this",  "from", "by",    "hot",  "word", "but",
    "what", "some",  "we",    "can",  "out",   "other", "were",  "all",   "there", "when", "up",    "use",  "your",
    "how",  "said",  "an",    "each", "she",   "which", "do",    "their", "time",  "if",   "will",  "way",  "about",
    "many", "then",  "them",  "write", "would", "like",  "so",    "these", "her",   "long", "make",  "thing",
};

char *lt_random_text(const int32_t *ids, int32_t n) {
    size_t len = 1;
    for (int32_t i = 0; i < n; i++) len += strlen(WORDS[(uint32_t)ids[i] % 64]) + 1;
    char *s = malloc(len), *p = s;
    if (!s) return NULL;
    for (int32_t i = 0; i < n; i++) {
        const char *w = WORDS[(uint32_t)ids[i] % 64];
        size_t wl = strlen(w);
        if (i) *p++ = ' ';
        memcpy(p, w, wl);
        p += wl;
    }
    *p = '\0';
    return s;
}
