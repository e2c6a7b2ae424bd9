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
 *
 * Tenants.  Each key is a tenant: the jobs it submits are its own.  Its
 * identity (gw_tenant.id) is the first 128 bits of SHA-256 of the key, in
 * hex: what the job hash records (field `tenant`), so neither Redis nor its
 * readers ever hold a key.  Other keys get 404 for a tenant's jobs, and
 * Idempotency-Keys are namespaced per tenant.  Admin keys (--admin-key-file,
 * $LLMQ_ADMIN_KEY_FILE, $LLMQ_ADMIN_API_KEYS; the same formats) are keys with
 * the admin role: they see and cancel every job, and the per-key limits
 * (priority range, unfinished jobs, tokens per minute) do not apply to them.  With no key
 * configured there are no tenants: the id is "" and nothing is scoped.
 */
#ifndef LLMQ_GW_AUTH_H
#define LLMQ_GW_AUTH_H

#include <stddef.h>

#include "common/status.h"

#define GW_AUTH_KEY_MAX 256 /* longest key, bytes; longer ones are refused at load */

#define GW_TENANT_LEN 32   /* hex digits of a tenant id (128 bits of SHA-256) */

typedef struct gw_auth_key {
    unsigned char b[GW_AUTH_KEY_MAX]; /* the key, zero-padded */
    size_t len;                       /* 1..GW_AUTH_KEY_MAX */
    char tenant[GW_TENANT_LEN + 1];   /* its identity (see "Tenants") */
    int admin;                        /* 1: an admin key */
} gw_auth_key;

/* Who sent a request. */
typedef struct gw_tenant {
    char id[GW_TENANT_LEN + 1];  /* "" when authentication is off */
    int admin;                   /* an admin key: sees every job, no per-key limits */
} gw_tenant;

typedef struct gw_auth {
    gw_auth_key *keys;           /* owned; n == 0 → no auth */
    size_t n;
    char *file;                  /* key file (owned copy), NULL = none */
    const char *file_from;       /* "--api-key-file" or "LLMQ_API_KEY_FILE", for messages */
    int use_env;                 /* $LLMQ_API_KEYS was set at init */
    char *admin_file;            /* admin key file (owned copy), NULL = none */
    const char *admin_file_from; /* "--admin-key-file" or "LLMQ_ADMIN_KEY_FILE" */
    int use_admin_env;           /* $LLMQ_ADMIN_API_KEYS was set at init */

    /* per-key limits (set by main after init; admin keys are exempt) */
    int prio_lo, prio_hi;        /* --priority-range LO:HI: the priorities a request may ask for
                                  * (the range applies with auth off too) */
    long long key_max_jobs;      /* --key-max-jobs: a key's jobs not yet ended (queued or
                                  * running) before 429; 0 = no limit */
    long long key_tpm;           /* --key-tokens-per-minute: tokens (prompt + completion) of a key's
                                  * jobs that ended over the last minute before 429; 0 = no limit */
} gw_auth;

#define GW_PRIORITY_LO_DEFAULT (-10) /* --priority-range default: the lanes map >0 high, 0, <0 low */
#define GW_PRIORITY_HI_DEFAULT 10
#define GW_KEY_MAX_JOBS_DEFAULT 1000 /* --key-max-jobs default */

/* Decide the sources (files: the flags', else the environment's) and load
 * them; the limits get their defaults.  LLMQ_ERR_IO / LLMQ_ERR_INVALID /
 * LLMQ_ERR_NOMEM with a message naming the source (never a key); a is valid
 * (and empty) on error. */
llmq_status gw_auth_init_admin(gw_auth *a, const char *key_file, const char *admin_key_file, llmq_err *err);
/* gw_auth_init_admin(a, key_file, NULL, err): admin keys from the environment only. */
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

/* As gw_auth_check, and t says who: the matching key's tenant id and role
 * (found in constant time too); id "" and admin 0 when auth is off, all
 * zero when refused. */
int gw_auth_identify(const gw_auth *a, const char *authorization, gw_tenant *t);

/* 1 when t may read and cancel a job whose hash records `owner` (NULL or ""
 * when the job has none: submitted straight into Redis, or with auth off). */
int gw_tenant_may_see(const gw_tenant *t, const char *owner);

#endif
