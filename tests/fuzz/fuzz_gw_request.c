/*
 * fuzz_gw_request.c — the gateway's JSON validation (gw_parse_request in
 * gateway/submit.c) of /v1/completions, /v1/chat/completions and /v1/jobs
 * bodies, without HTTP and without Redis: validation happens before
 * anything is sent, and needs only the configuration and the model list.
 *
 * Input: byte 0 picks the API (mod 3: completions, chat, jobs), the rest is
 * the body.
 *
 * Invariants: a refusal is a 4xx with a message (404 only for an unknown
 * model); an accepted body becomes a request that encodes, decodes on the
 * worker's side (proto_request_decode) and validates there too — the
 * gateway must never queue a job the worker will refuse to read.
 */
#include <string.h>

#include "gateway/submit.h"
#include "tests/fuzz/fuzz.h"

static gw g;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    memset(&g, 0, sizeof g);
    g.cfg.max_tokens_limit = 32768; /* the gateway's default --max-tokens-limit */
    g.cfg.max_body = 4 << 20;
    if (gw_model_add(&g, "m1", 1) < 0 || gw_model_add(&g, "org/model-7b", 1) < 0) fuzz_fail("model list");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    static const gw_api apis[3] = {GW_API_COMPLETIONS, GW_API_CHAT, GW_API_JOBS};
    gw_api api = apis[data[0] % 3];
    gw_parsed p;
    gw_bad bad;
    memset(&bad, 0, sizeof bad);
    int rc = gw_parse_request(&g, api, (const char *)data + 1, size - 1, &p, &bad);
    if (rc != 0) {
        fuzz_check(bad.status == 400 || bad.status == 404, "refused with status %d: %s", bad.status, bad.msg);
        fuzz_check(bad.msg[0] && bad.type, "refusal without a message");
        proto_request_deinit(&p.r);
        return 0;
    }
    fuzz_check(p.r.model && gw_model_lookup(&g, p.r.model) >= 0, "accepted an unknown model");
    p.r.id = strdup("0190f3c2a1b2-fuzz"); /* as the routes do before gw_submit */
    proto_buf b;
    proto_buf_init(&b);
    llmq_err err;
    fuzz_check(proto_request_encode(&p.r, &b, &err) == LLMQ_OK, "accepted request does not encode: %s", err.msg);
    proto_request back;
    fuzz_check(proto_request_decode(&back, b.data, b.len, &err) == LLMQ_OK,
               "the worker cannot decode an accepted request: %s", err.msg);
    fuzz_check(proto_request_validate(&back, &err) == LLMQ_OK, "the worker refuses an accepted request: %s",
               err.msg);
    fuzz_check(back.kind == p.r.kind && back.max_tokens == p.r.max_tokens && back.n_stop == p.r.n_stop,
               "the request changed on the wire");
    proto_request_deinit(&back);
    proto_buf_deinit(&b);
    proto_request_deinit(&p.r);
    return 0;
}
