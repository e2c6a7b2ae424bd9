/*
 * sentinel.h — finding the primary of a Redis Sentinel set (redis-sentinel://
 * URLs, url.h).  hiredis knows nothing of Sentinel, so every (re)connect
 * asks: each sentinel in turn, with a short timeout, answers
 * SENTINEL get-master-addr-by-name; the first answer wins.  After
 * connecting, the caller checks ROLE says "master": a sentinel may still
 * name a primary that was demoted, and a demoted primary that comes back
 * as a replica must not be written to.
 */
#ifndef LLMQ_SENTINEL_H
#define LLMQ_SENTINEL_H

#include <hiredis/hiredis.h>

#include "common/status.h"
#include "common/url.h"

/* Write the primary's address into u->host / u->port (u->n_sentinels > 0).
 * timeout_ms bounds each sentinel's connect and reply.  LLMQ_ERR_IO with
 * every sentinel's answer in the message when none knows the primary. */
llmq_status sentinel_locate(redis_url *u, int timeout_ms, llmq_err *err);

/* 1 when r is a ROLE reply of a primary ("master", ...). */
int sentinel_role_is_master(const redisReply *r);

#endif
