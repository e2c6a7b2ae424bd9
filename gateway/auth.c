/*
 * auth.c — bearer API keys (see auth.h for sources, rotation and the
 * constant-time check).  Messages name the source and the line, never a key.
 */
#include "gateway/auth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/sha.h>

/* ================================================================ key sets */

typedef struct key_set {
    gw_auth_key *keys;
    size_t n, cap;
} key_set;

static void key_set_free(key_set *s) {
    if (s->keys) explicit_bzero(s->keys, s->cap * sizeof *s->keys);
    free(s->keys);
    memset(s, 0, sizeof *s);
}

/* Add s[0..n) after trimming blanks; empty → nothing.  `where` names the
 * source for errors. */
static llmq_status key_set_add(key_set *ks, const char *s, size_t n, int admin, const char *where, llmq_err *err) {
    while (n && (*s == ' ' || *s == '\t')) s++, n--;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n')) n--;
    if (!n) return LLMQ_OK;
    if (n > GW_AUTH_KEY_MAX)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "%s: a key is longer than %d bytes", where, GW_AUTH_KEY_MAX);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return llmq_err_set(err, LLMQ_ERR_INVALID, "%s: a key holds a control character", where);
    if (ks->n == ks->cap) {
        size_t cap = ks->cap ? 2 * ks->cap : 4;
        gw_auth_key *k = calloc(cap, sizeof *k);
        if (!k) return llmq_err_set(err, LLMQ_ERR_NOMEM, "%s: out of memory", where);
        if (ks->n) memcpy(k, ks->keys, ks->n * sizeof *k);
        if (ks->keys) explicit_bzero(ks->keys, ks->cap * sizeof *ks->keys);
        free(ks->keys);
        ks->keys = k;
        ks->cap = cap;
    }
    gw_auth_key *k = &ks->keys[ks->n++];
    memset(k, 0, sizeof *k);
    memcpy(k->b, s, n);
    k->len = n;
    k->admin = admin;
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256(k->b, n, md);
    for (int i = 0; i < GW_TENANT_LEN / 2; i++) snprintf(k->tenant + 2 * i, 3, "%02x", md[i]);
    explicit_bzero(md, sizeof md);
    return LLMQ_OK;
}

static llmq_status load_file(key_set *ks, const char *path, const char *from, int admin, llmq_err *err) {
    FILE *f = fopen(path, "r");
    if (!f) return llmq_err_set(err, LLMQ_ERR_IO, "%s %s: %s", from, path, strerror(errno));
    char *line = NULL;
    size_t cap = 0, before = ks->n;
    ssize_t len;
    int lineno = 0;
    llmq_status st = LLMQ_OK;
    while (st == LLMQ_OK && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        const char *s = line;
        while (*s == ' ' || *s == '\t') s++;
        if (*s == '#') continue;
        char where[4200];
        snprintf(where, sizeof where, "%s %s line %d", from, path, lineno);
        st = key_set_add(ks, line, (size_t)len, admin, where, err);
    }
    if (st == LLMQ_OK && ferror(f)) st = llmq_err_set(err, LLMQ_ERR_IO, "%s %s: read error", from, path);
    if (line) explicit_bzero(line, cap);
    free(line);
    fclose(f);
    if (st == LLMQ_OK && ks->n == before)
        st = llmq_err_set(err, LLMQ_ERR_INVALID, "%s %s holds no key", from, path);
    return st;
}

/* The keys of environment variable var (comma-separated). */
static llmq_status load_env(key_set *ks, const char *var, int admin, llmq_err *err) {
    const char *v = getenv(var);
    size_t before = ks->n;
    if (!v) return LLMQ_OK;
    for (const char *p = v;;) {
        size_t n = strcspn(p, ",");
        llmq_status st = key_set_add(ks, p, n, admin, var, err);
        if (st) return st;
        if (!p[n]) break;
        p += n + 1;
    }
    if (ks->n == before) return llmq_err_set(err, LLMQ_ERR_INVALID, "%s is set but holds no key", var);
    return LLMQ_OK;
}

/* Every configured source into a fresh set. */
static llmq_status load_all(const gw_auth *a, key_set *ks, llmq_err *err) {
    memset(ks, 0, sizeof *ks);
    llmq_status st = a->file ? load_file(ks, a->file, a->file_from, 0, err) : LLMQ_OK;
    if (!st && a->use_env) st = load_env(ks, "LLMQ_API_KEYS", 0, err);
    if (!st && a->admin_file) st = load_file(ks, a->admin_file, a->admin_file_from, 1, err);
    if (!st && a->use_admin_env) st = load_env(ks, "LLMQ_ADMIN_API_KEYS", 1, err);
    if (st) key_set_free(ks);
    return st;
}

/* ================================================================ API */

/* The file of a flag, else of an environment variable: *from names which. */
static const char *pick_file(const char *flag_value, const char *flag, const char *var, const char **from) {
    const char *env = getenv(var);
    *from = flag;
    if (flag_value) return flag_value;
    if (env && *env) {
        *from = var;
        return env;
    }
    return NULL;
}

llmq_status gw_auth_init(gw_auth *a, const char *key_file, llmq_err *err) {
    return gw_auth_init_admin(a, key_file, NULL, err);
}

llmq_status gw_auth_init_admin(gw_auth *a, const char *key_file, const char *admin_key_file, llmq_err *err) {
    memset(a, 0, sizeof *a);
    a->prio_lo = GW_PRIORITY_LO_DEFAULT;
    a->prio_hi = GW_PRIORITY_HI_DEFAULT;
    a->key_max_jobs = GW_KEY_MAX_JOBS_DEFAULT;
    const char *admin = pick_file(admin_key_file, "--admin-key-file", "LLMQ_ADMIN_KEY_FILE", &a->admin_file_from);
    if (admin && !(a->admin_file = strdup(admin))) return llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory");
    a->use_admin_env = getenv("LLMQ_ADMIN_API_KEYS") != NULL;
    const char *env_file = getenv("LLMQ_API_KEY_FILE");
    const char *file = key_file;
    a->file_from = "--api-key-file";
    if (!file && env_file && *env_file) {
        file = env_file;
        a->file_from = "LLMQ_API_KEY_FILE";
    }
    if (file && !(a->file = strdup(file))) return llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory");
    a->use_env = getenv("LLMQ_API_KEYS") != NULL;
    key_set ks;
    llmq_status st = load_all(a, &ks, err);
    if (st) return st;
    a->keys = ks.keys;
    a->n = ks.n;
    return LLMQ_OK;
}

/* Wipe and free the keys.  Slots past n (spare capacity) were never written. */
static void wipe_keys(gw_auth *a) {
    if (a->keys) explicit_bzero(a->keys, a->n * sizeof *a->keys);
    free(a->keys);
    a->keys = NULL;
    a->n = 0;
}

void gw_auth_deinit(gw_auth *a) {
    wipe_keys(a);
    free(a->file);
    a->file = NULL;
    free(a->admin_file);
    a->admin_file = NULL;
}

llmq_status gw_auth_reload(gw_auth *a, llmq_err *err) {
    if (!a->file && !a->use_env && !a->admin_file && !a->use_admin_env)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "no API key source configured (--api-key-file, LLMQ_API_KEY_FILE, "
                                                   "LLMQ_API_KEYS, --admin-key-file, ...): nothing to reload");
    key_set ks;
    llmq_status st = load_all(a, &ks, err);
    if (st) return st;
    wipe_keys(a);
    a->keys = ks.keys;
    a->n = ks.n;
    return LLMQ_OK;
}

int gw_auth_enabled(const gw_auth *a) { return a->n > 0; }

int gw_auth_check(const gw_auth *a, const char *h) {
    gw_tenant t;
    return gw_auth_identify(a, h, &t);
}

int gw_auth_identify(const gw_auth *a, const char *h, gw_tenant *t) {
    memset(t, 0, sizeof *t);
    if (a->n == 0) return 1;
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return 0;
    const char *key = h + 7;
    while (*key == ' ' || *key == '\t') key++;
    size_t kn = strlen(key);
    while (kn && (key[kn - 1] == ' ' || key[kn - 1] == '\t')) kn--;
    unsigned char got[GW_AUTH_KEY_MAX] = {0};
    memcpy(got, key, kn < GW_AUTH_KEY_MAX ? kn : GW_AUTH_KEY_MAX);
    /* every key, every byte: no early exit anywhere (see auth.h); the
     * matching key's tenant and role are OR-ed in under a mask, so which key
     * matched changes no branch either (a key listed twice has one tenant) */
    unsigned ok = 0, admin = 0;
    for (size_t k = 0; k < a->n; k++) {
        const gw_auth_key *ref = &a->keys[k];
        volatile unsigned char diff = 0;
        for (size_t i = 0; i < GW_AUTH_KEY_MAX; i++) diff |= got[i] ^ ref->b[i];
        size_t dl = kn ^ ref->len;
        unsigned match = (unsigned)((diff | (dl != 0)) == 0);
        unsigned char mask = (unsigned char)(0u - match);
        for (size_t i = 0; i < GW_TENANT_LEN; i++) t->id[i] = (char)((unsigned char)t->id[i] | ((unsigned char)ref->tenant[i] & mask));
        admin |= match & (unsigned)ref->admin;
        ok |= match;
    }
    explicit_bzero(got, sizeof got);
    if (!ok) memset(t, 0, sizeof *t);
    t->admin = ok && admin;
    return ok != 0;
}

int gw_tenant_may_see(const gw_tenant *t, const char *owner) {
    return t->admin || !t->id[0] || !owner || !owner[0] || !strcmp(owner, t->id);
}
