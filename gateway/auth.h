/*
 * auth.h — the gateway's bearer API keys: where they come from, how a
 * request's key is checked, and rotation without a restart.
 *
 * Sources (their keys are merged):
 *   - a key file: --api-key-file F, else $LLMQ_API_KEY_FILE; one key per
 *     line, blank lines and '#' comments ignored, surrounding blanks trimmed;
 *   - $LLMQ_API_KEYS: keys separated by commas.
 * No source → authentication is off (the gateway warns at start and /readyz
 * says "auth":"disabled").  A configured source that yields no key is an
 * error, never "auth off".
 *
 * gw_auth_reload() (SIGHUP) reads the sources again into a new set and swaps
 * it in only when that succeeded: a missing, unreadable or empty file keeps
 * the old keys.  So a failed rotation can never turn authentication off.
 *
 * Keys are stored zero-padded in fixed GW_AUTH_KEY_MAX-byte slots, and a
 * check compares the presented key with every slot over all GW_AUTH_KEY_MAX
 * bytes, without an early exit: its time depends only on the number of keys,
 * neither on where the first wrong byte is, nor on the length of any key,
 * nor on which key matched.  Old key material is wiped when replaced.
 */
#ifndef LLMQ_GW_AUTH_H
#define LLMQ_GW_AUTH_H

#include <stddef.h>

#include "common/status.h"

#define GW_AUTH_KEY_MAX 256 /* longest key, bytes; longer ones are refused at load */

typedef struct gw_auth_key {
    unsigned char b[GW_AUTH_KEY_MAX]; /* the key, zero-padded */
    size_t len;                       /* 1..GW_AUTH_KEY_MAX */
} gw_auth_key;

typedef struct gw_auth {
    gw_auth_key *keys;           /* owned; n == 0 → no auth */
    size_t n;
    char *file;                  /* key file (owned copy), NULL = none */
    const char *file_from;       /* "--api-key-file" or "LLMQ_API_KEY_FILE", for messages */
    int use_env;                 /* $LLMQ_API_KEYS was set at init */
} gw_auth;

/* Decide the sources (file: the flag's, else the environment's) and load
 * them.  LLMQ_ERR_IO / LLMQ_ERR_INVALID / LLMQ_ERR_NOMEM with a message
 * naming the source (never a key); a is valid (and empty) on error. */
llmq_status gw_auth_init(gw_auth *a, const char *key_file, llmq_err *err);
void gw_auth_deinit(gw_auth *a);

/* Read the sources again; on success the new keys replace the old ones, on
 * error the old ones stay and err says why. */
llmq_status gw_auth_reload(gw_auth *a, llmq_err *err);

/* 1 when keys are configured. */
int gw_auth_enabled(const gw_auth *a);

/* 1 when the Authorization header value (may be NULL) is "Bearer <key>"
 * with a configured key, or when auth is off. */
int gw_auth_check(const gw_auth *a, const char *authorization);

#endif
