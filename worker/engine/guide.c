/*
 * guide.c — llguidance through dlopen (see guide.h for the contract).
 *
 * The declarations below are ours, written from llguidance's documented C
 * API (llguidance.h, "See src/ffi.rs for full API documentation"); only the
 * few functions used are looked up.  Two structs cross the boundary:
 *  - the tokenizer's init, in its V2 form, which carries its own size so
 *    that a newer library reads only the fields we know;
 *  - the constraint init, which llg_constraint_init_set_defaults fills: we
 *    hand it a zeroed buffer larger than the struct and set only its two
 *    leading log levels, so its parser limits stay the library's defaults.
 */
#include "worker/engine/guide.h"

#include <dlfcn.h>
#include <glob.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------ the C API */

typedef struct llg_tokenizer llg_tokenizer; /* LlgTokenizer, opaque */
typedef struct llg_matcher llg_matcher;     /* LlgMatcher, opaque */

/* LlgTokenizeFn: tokenize bytes (no BOS); returns the full count, writes at most cap. */
typedef size_t (*llg_tokenize_fn)(const void *ud, const uint8_t *bytes, size_t n, uint32_t *out, size_t cap);

/* LlgTokenizerInitV2, field for field. */
typedef struct llg_tok_init {
    size_t struct_size;             /* sizeof this struct: the library reads that much */
    uint32_t vocab_size;
    uint32_t tok_eos;
    const uint32_t *token_lens;     /* [vocab_size] bytes of each token */
    const uint8_t *token_bytes;     /* all tokens back to back; a special token starts with 0xFF */
    const char *tokenizer_json;     /* NULL: we pass the bytes */
    bool tokenize_assumes_string;   /* the tokenize function wants valid UTF-8 */
    llg_tokenize_fn tokenize_fn;
    bool use_approximate_greedy_tokenize_fn;
    const void *tokenize_user_data;
    const char *const *slices;      /* NULL: the library's defaults */
    const uint32_t *tok_eos_extra;  /* further EOS ids */
    uint32_t tok_eos_extra_count;
} llg_tok_init;

/* The head of LlgConstraintInit (the rest: flags and parser limits). */
typedef struct llg_constraint_init_head {
    const llg_tokenizer *tokenizer;
    uint32_t log_buffer_level;      /* 0: keep no log in the matcher */
    uint32_t log_stderr_level;      /* 0: nothing on stderr */
} llg_constraint_init_head;

/* Room for the whole LlgConstraintInit (about 90 bytes in 1.x) with margin. */
typedef union llg_constraint_init {
    llg_constraint_init_head head;
    max_align_t align;
    unsigned char bytes[1024];
} llg_constraint_init;

typedef struct llg_api {
    const char *(*get_version)(void);
    llg_tokenizer *(*new_tokenizer_v2)(const llg_tok_init *init, char *err, size_t err_len);
    void (*free_tokenizer)(llg_tokenizer *t);
    void (*constraint_init_set_defaults)(llg_constraint_init *init, const llg_tokenizer *t);
    llg_matcher *(*new_matcher)(const llg_constraint_init *init, const char *type, const char *data);
    const char *(*matcher_get_error)(llg_matcher *m);
    int32_t (*matcher_compute_mask_into)(llg_matcher *m, uint32_t *mask, size_t mask_bytes);
    size_t (*matcher_get_mask_byte_size)(const llg_matcher *m);
    int32_t (*matcher_consume_token)(llg_matcher *m, uint32_t token);
    int32_t (*matcher_consume_tokens)(llg_matcher *m, const uint32_t *tokens, size_t n);
    bool (*matcher_is_stopped)(const llg_matcher *m);
    void (*free_matcher)(llg_matcher *m);
} llg_api;

static const struct {
    const char *name;
    size_t off;
} api_syms[] = {
    {"llg_get_version", offsetof(llg_api, get_version)},
    {"llg_new_tokenizer_v2", offsetof(llg_api, new_tokenizer_v2)},
    {"llg_free_tokenizer", offsetof(llg_api, free_tokenizer)},
    {"llg_constraint_init_set_defaults", offsetof(llg_api, constraint_init_set_defaults)},
    {"llg_new_matcher", offsetof(llg_api, new_matcher)},
    {"llg_matcher_get_error", offsetof(llg_api, matcher_get_error)},
    {"llg_matcher_compute_mask_into", offsetof(llg_api, matcher_compute_mask_into)},
    {"llg_matcher_get_mask_byte_size", offsetof(llg_api, matcher_get_mask_byte_size)},
    {"llg_matcher_consume_token", offsetof(llg_api, matcher_consume_token)},
    {"llg_matcher_consume_tokens", offsetof(llg_api, matcher_consume_tokens)},
    {"llg_matcher_is_stopped", offsetof(llg_api, matcher_is_stopped)},
    {"llg_free_matcher", offsetof(llg_api, free_matcher)},
};

/* The oldest llguidance whose API matches these declarations
 * (llg_new_tokenizer_v2 and the matcher calls). */
#define GUIDE_MIN_MAJOR 1
#define GUIDE_MIN_MINOR 0

struct guide_lib {
    void *py;                  /* dlopen handle of libpython (kept for the library's symbols) */
    void *so;                  /* dlopen handle of llguidance */
    llg_api api;
    llg_tokenizer *tok;        /* the model's tokenizer, llguidance's view */
    int vocab;                 /* ids in a mask (the model's logits row) */
    char path[PATH_MAX];       /* the library file */
    char version[128];
};

struct guide_matcher {
    guide_lib *g;
    llg_matcher *m;
    size_t mask_bytes;         /* guide_mask_words(g->vocab) * 4 */
};

/* ------------------------------------------------------------ finding it */

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The library in folder dir: the wheel names it _lib.abi3.so (or
 * _lib.<tag>.so); a site-packages folder holds it under llguidance/. */
static int lib_in_dir(const char *dir, char *out, size_t cap) {
    static const char *const pats[] = {"/_lib*.so", "/llguidance/_lib*.so", "/libllguidance*.so"};
    for (size_t i = 0; i < sizeof pats / sizeof *pats; i++) {
        char pat[PATH_MAX + 32];
        snprintf(pat, sizeof pat, "%s%s", dir, pats[i]);
        glob_t gl;
        if (glob(pat, 0, NULL, &gl) == 0 && gl.gl_pathc > 0) {
            snprintf(out, cap, "%s", gl.gl_pathv[0]);
            globfree(&gl);
            return 0;
        }
        globfree(&gl);
    }
    return -1;
}

/* Where a python finds llguidance (with_pkg), and that python's libpython.
 * Lines: the package folder ("" without with_pkg), LIBDIR, INSTSONAME (the
 * last two may be empty). */
static int ask_python(const char *py, char *pkg, char *libdir, char *soname, size_t cap, int with_pkg) {
    char cmd[PATH_MAX + 300];
    snprintf(cmd, sizeof cmd,
             "'%s' -c 'import os, sysconfig as s; %s; "
             "print(s.get_config_var(\"LIBDIR\") or \"\"); print(s.get_config_var(\"INSTSONAME\") or \"\")' "
             "2>/dev/null",
             py, with_pkg ? "import llguidance; print(os.path.dirname(llguidance.__file__))" : "print()");
    FILE *f = popen(cmd, "r");
    if (!f) return -1;
    char *lines[3] = {pkg, libdir, soname};
    int n = 0;
    for (; n < 3 && fgets(lines[n], (int)cap, f); n++) lines[n][strcspn(lines[n], "\n")] = 0;
    const int rc = pclose(f);
    if (rc != 0 || n < 1 || (with_pkg && !pkg[0])) return -1;
    if (n < 3) soname[0] = 0;
    if (n < 2) libdir[0] = 0;
    return 0;
}

/* The venv's python beside the binary (<repo>/build/llmq-worker ->
 * <repo>/.venv/bin/python), as `make deps` installs it. */
static int venv_python(char *out, size_t cap) {
    char exe[PATH_MAX - 32];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return -1;
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (!slash) return -1;
    *slash = 0;
    snprintf(out, cap, "%s/../.venv/bin/python", exe);
    return access(out, X_OK) == 0 ? 0 : -1;
}

/* libpython, global, before the library: its Python references must bind.
 * The python's own (LIBDIR/INSTSONAME) first, else Debian's by name. */
static void *load_libpython(const char *libdir, const char *soname, char *why, size_t cap) {
    char p[PATH_MAX + 64];
    void *h = NULL;
    if (soname && soname[0]) {
        if (libdir && libdir[0]) {
            snprintf(p, sizeof p, "%s/%s", libdir, soname);
            h = dlopen(p, RTLD_NOW | RTLD_GLOBAL);
        }
        if (!h) h = dlopen(soname, RTLD_NOW | RTLD_GLOBAL);
    }
    for (int minor = 14; !h && minor >= 8; minor--) {
        snprintf(p, sizeof p, "libpython3.%d.so.1.0", minor);
        h = dlopen(p, RTLD_NOW | RTLD_GLOBAL);
    }
    if (!h) h = dlopen("libpython3.so", RTLD_NOW | RTLD_GLOBAL);
    if (!h) snprintf(why, cap, "no libpython3 to load before it (install Debian's libpython3.X)");
    return h;
}

/* ------------------------------------------------------------ tokenizer */

/* Every id's bytes as a text continues (tok_id_bytes), a special token
 * marked with a leading 0xFF as llguidance wants; ids past the tokenizer
 * are empty (never allowed). */
static llmq_status build_tokenizer(guide_lib *g, const tokenizer *tok, const int32_t *eos, int n_eos,
                                   llmq_err *err) {
    tok_text all = {0}, piece = {0};
    uint32_t *lens = calloc((size_t)g->vocab, sizeof *lens);
    uint32_t *extra = n_eos > 1 ? calloc((size_t)n_eos - 1, sizeof *extra) : NULL;
    llmq_status st = LLMQ_OK;
    if (!lens || (n_eos > 1 && !extra)) st = llmq_err_set(err, LLMQ_ERR_NOMEM, "llguidance: out of memory");
    const int n_tok = tok_vocab_size(tok);
    for (int id = 0; id < g->vocab && id < n_tok && !st; id++) {
        piece.len = 0;
        if (tok_id_bytes(tok, id, &piece)) {
            st = llmq_err_set(err, LLMQ_ERR_NOMEM, "llguidance: out of memory");
            break;
        }
        if (piece.len == 0) continue;
        const int special = tok_is_special(tok, id);
        if ((special && tok_text_append(&all, "\xff", 1)) || tok_text_append(&all, piece.data, piece.len))
            st = llmq_err_set(err, LLMQ_ERR_NOMEM, "llguidance: out of memory");
        lens[id] = (uint32_t)piece.len + (special ? 1u : 0u);
    }
    if (!st) {
        for (int k = 1; k < n_eos; k++) extra[k - 1] = (uint32_t)eos[k];
        llg_tok_init ti;
        memset(&ti, 0, sizeof ti);
        ti.struct_size = sizeof ti;
        ti.vocab_size = (uint32_t)g->vocab;
        ti.tok_eos = n_eos > 0 ? (uint32_t)eos[0] : (uint32_t)tok_eos_id(tok);
        ti.token_lens = lens;
        ti.token_bytes = all.data ? (const uint8_t *)all.data : (const uint8_t *)"";
        /* where a constraint forces bytes, llguidance tokenizes them to
         * pick the tokens: greedily over the token bytes, not with our
         * encoder, which tokenizes a text's start (Metaspace's "▁" prefix
         * would turn a forced "o" into "▁o") */
        ti.use_approximate_greedy_tokenize_fn = true;
        ti.tok_eos_extra = extra;
        ti.tok_eos_extra_count = n_eos > 1 ? (uint32_t)n_eos - 1 : 0;
        char msg[512] = "";
        g->tok = g->api.new_tokenizer_v2(&ti, msg, sizeof msg);
        if (!g->tok) st = llmq_err_set(err, LLMQ_ERR_INVALID, "llguidance: the model's tokenizer: %s", msg);
    }
    tok_text_deinit(&all);
    tok_text_deinit(&piece);
    free(lens);
    free(extra);
    return st;
}

/* ------------------------------------------------------------ loading */

/* "llguidance@1.9.1 ..." (or "1.9.1"): major and minor; -1 when unreadable. */
static int parse_version(const char *v, int *major, int *minor) {
    const char *at = strstr(v, "llguidance@");
    const char *p = at ? at + strlen("llguidance@") : v;
    return sscanf(p, "%d.%d", major, minor) == 2 ? 0 : -1;
}

static llmq_status open_library(guide_lib *g, const char *path, llmq_err *err) {
    char pkg[PATH_MAX] = "", libdir[PATH_MAX] = "", soname[PATH_MAX] = "", why[256] = "";
    const char *from = "--llguidance";
    if (!path || !path[0]) {
        path = getenv(GUIDE_ENV);
        from = GUIDE_ENV;
    }
    if (path && path[0]) {
        if (is_dir(path)) {
            if (lib_in_dir(path, g->path, sizeof g->path))
                return llmq_err_set(err, LLMQ_ERR_UNSUPPORTED, "llguidance: %s %s: no _lib*.so in that folder", from,
                                    path);
        } else if (access(path, R_OK) == 0) {
            snprintf(g->path, sizeof g->path, "%s", path);
        } else {
            return llmq_err_set(err, LLMQ_ERR_UNSUPPORTED, "llguidance: %s %s: no such file", from, path);
        }
        /* a library path says nothing of its python: Debian's libpython by
         * name, else the one python3 names */
        if (!(g->py = load_libpython("", "", why, sizeof why))) {
            char ignored[PATH_MAX];
            if (ask_python("python3", ignored, libdir, soname, sizeof libdir, 0)) libdir[0] = soname[0] = 0;
        }
    } else {
        char py[PATH_MAX];
        int found = !venv_python(py, sizeof py) && !ask_python(py, pkg, libdir, soname, sizeof pkg, 1);
        if (!found) found = !ask_python("python3", pkg, libdir, soname, sizeof pkg, 1);
        if (!found)
            return llmq_err_set(err, LLMQ_ERR_UNSUPPORTED,
                                "llguidance: not found (no --llguidance, no " GUIDE_ENV
                                ", and no python3 that can `import llguidance`)");
        if (lib_in_dir(pkg, g->path, sizeof g->path))
            return llmq_err_set(err, LLMQ_ERR_UNSUPPORTED, "llguidance: python's package %s holds no _lib*.so", pkg);
    }
    if (!g->py && !(g->py = load_libpython(libdir, soname, why, sizeof why)))
        return llmq_err_set(err, LLMQ_ERR_UNSUPPORTED, "llguidance: %s: %s", g->path, why);
    if (!(g->so = dlopen(g->path, RTLD_NOW | RTLD_LOCAL)))
        return llmq_err_set(err, LLMQ_ERR_INVALID, "llguidance: cannot load %s: %s", g->path, dlerror());
    for (size_t i = 0; i < sizeof api_syms / sizeof *api_syms; i++) {
        void *f = dlsym(g->so, api_syms[i].name);
        if (!f)
            return llmq_err_set(err, LLMQ_ERR_INVALID, "llguidance: %s has no %s (older than %d.%d?)", g->path,
                                api_syms[i].name, GUIDE_MIN_MAJOR, GUIDE_MIN_MINOR);
        memcpy((char *)&g->api + api_syms[i].off, &f, sizeof f);
    }
    const char *v = g->api.get_version();
    snprintf(g->version, sizeof g->version, "%s", v ? v : "?");
    int major = 0, minor = 0;
    if (parse_version(g->version, &major, &minor) ||
        major < GUIDE_MIN_MAJOR || (major == GUIDE_MIN_MAJOR && minor < GUIDE_MIN_MINOR))
        return llmq_err_set(err, LLMQ_ERR_INVALID, "llguidance: %s is version '%s'; llmq needs %d.%d or newer",
                            g->path, g->version, GUIDE_MIN_MAJOR, GUIDE_MIN_MINOR);
    return LLMQ_OK;
}

llmq_status guide_lib_load(guide_lib **out, const char *path, const tokenizer *tok, int vocab, const int32_t *eos,
                           int n_eos, llmq_err *err) {
    *out = NULL;
    if (!tok) return llmq_err_set(err, LLMQ_ERR_INVALID, "llguidance: the model has no tokenizer.json");
    guide_lib *g = calloc(1, sizeof *g);
    if (!g) return llmq_err_set(err, LLMQ_ERR_NOMEM, "llguidance: out of memory");
    g->vocab = vocab;
    llmq_status st = open_library(g, path, err);
    if (!st) st = build_tokenizer(g, tok, eos, n_eos, err);
    if (!st) { /* one matcher end to end, so that a library that loads but
                  does not work (a mask of another size) is found now */
        guide_matcher *m = NULL;
        st = guide_matcher_create(&m, g, "regex", "a", err);
        guide_matcher_destroy(m);
    }
    if (st) {
        guide_lib_destroy(g);
        return st;
    }
    *out = g;
    return LLMQ_OK;
}

void guide_lib_destroy(guide_lib *g) {
    if (!g) return;
    if (g->tok) g->api.free_tokenizer(g->tok);
    /* the library and libpython stay mapped: a Rust library's thread-local
     * destructors may still run at exit */
    free(g);
}

const char *guide_lib_version(const guide_lib *g) { return g->version; }
const char *guide_lib_path(const guide_lib *g) { return g->path; }
int guide_lib_vocab(const guide_lib *g) { return g->vocab; }

/* ------------------------------------------------------------ matcher */

llmq_status guide_matcher_create(guide_matcher **out, guide_lib *g, const char *type, const char *data,
                                 llmq_err *err) {
    *out = NULL;
    guide_matcher *m = calloc(1, sizeof *m);
    if (!m) return llmq_err_set(err, LLMQ_ERR_NOMEM, "out of memory: the worker cannot hold the constraint");
    llg_constraint_init ci;
    memset(&ci, 0, sizeof ci);
    g->api.constraint_init_set_defaults(&ci, g->tok);
    ci.head.log_buffer_level = 0;
    ci.head.log_stderr_level = 0; /* errors reach the caller through guide_matcher_error */
    m->g = g;
    m->m = g->api.new_matcher(&ci, type, data);
    const char *e = m->m ? g->api.matcher_get_error(m->m) : "the library returned no matcher";
    if (e) {
        llmq_err_set(err, LLMQ_ERR_INVALID, "invalid %s constraint: %s", type, e);
        guide_matcher_destroy(m);
        return LLMQ_ERR_INVALID;
    }
    m->mask_bytes = guide_mask_words(g->vocab) * sizeof(uint32_t);
    const size_t want = g->api.matcher_get_mask_byte_size(m->m);
    if (want != m->mask_bytes) {
        llmq_err_set(err, LLMQ_ERR_INTERNAL, "llguidance: a mask of %zu bytes for %d ids (expected %zu)", want,
                     g->vocab, m->mask_bytes);
        guide_matcher_destroy(m);
        return LLMQ_ERR_INTERNAL;
    }
    *out = m;
    return LLMQ_OK;
}

void guide_matcher_destroy(guide_matcher *m) {
    if (!m) return;
    if (m->m) m->g->api.free_matcher(m->m);
    free(m);
}

int guide_matcher_mask(guide_matcher *m, uint32_t *mask) {
    if (m->g->api.matcher_compute_mask_into(m->m, mask, m->mask_bytes)) return -1;
    const size_t words = m->mask_bytes / sizeof *mask;
    int n = 0;
    for (size_t i = 0; i < words; i++) n += __builtin_popcount(mask[i]);
    return n;
}

int guide_matcher_consume(guide_matcher *m, int32_t token) {
    if (token < 0) return -1;
    return m->g->api.matcher_consume_token(m->m, (uint32_t)token) ? -1 : 0;
}

int guide_matcher_consume_all(guide_matcher *m, const int32_t *tokens, int n) {
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0) return -1;
    if (n <= 0) return 0;
    /* ids are non-negative: the same bits as the library's u32 */
    return m->g->api.matcher_consume_tokens(m->m, (const uint32_t *)tokens, (size_t)n) ? -1 : 0;
}

int guide_matcher_is_stopped(const guide_matcher *m) { return m->g->api.matcher_is_stopped(m->m) ? 1 : 0; }

const char *guide_matcher_error(guide_matcher *m) {
    const char *e = m->g->api.matcher_get_error(m->m);
    return e ? e : "";
}
