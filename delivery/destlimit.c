/*
 * destlimit.c - the pure parts of per-destination flow control: the
 * concurrency window (Postfix qmgr's "slow start": start at
 * initial_destination_concurrency, +1 per success up to the limit, -1 per
 * failed attempt), a token bucket for destination_limits rate=, and the
 * dead-destination state (smtp_destination_dead_threshold,
 * smtp_destination_dead_time). No I/O and no clock of their own: the
 * caller passes the time, so unit tests use a fake clock.
 */
#include "route.h"

void window_init(struct conc_window *w, unsigned initial, unsigned limit)
{
    if (limit < 1)
        limit = 1;
    if (initial < 1)
        initial = 1;
    w->limit = limit;
    w->cur = initial < limit ? initial : limit;
}

void window_set_limit(struct conc_window *w, unsigned limit)
{
    if (limit < 1)
        limit = 1;
    w->limit = limit;
    if (w->cur > limit)
        w->cur = limit;
    if (w->cur < 1)
        w->cur = 1;
}

void window_success(struct conc_window *w)
{
    if (w->cur < w->limit)
        w->cur++;
}

void window_failure(struct conc_window *w)
{
    if (w->cur > 1)
        w->cur--;
}

void bucket_init(struct token_bucket *b, double rate, int64_t now_ms)
{
    b->rate = rate;
    /* A burst of one second's worth, at least one message. */
    b->burst = rate >= 1.0 ? rate : 1.0;
    b->tokens = b->burst;
    b->last_ms = now_ms;
}

bool bucket_take(struct token_bucket *b, int64_t now_ms, int64_t *wait_ms)
{
    if (b->rate <= 0) {
        *wait_ms = 0;
        return true; /* no limit */
    }
    if (now_ms > b->last_ms) {
        b->tokens += (double)(now_ms - b->last_ms) * b->rate / 1000.0;
        if (b->tokens > b->burst)
            b->tokens = b->burst;
        b->last_ms = now_ms;
    }
    if (b->tokens >= 1.0) {
        b->tokens -= 1.0;
        *wait_ms = 0;
        return true;
    }
    double need = (1.0 - b->tokens) * 1000.0 / b->rate;
    *wait_ms = (int64_t)need + 1;
    return false;
}

bool dead_failure(struct deadness *x, unsigned threshold, int64_t now_ms, int64_t dead_ms)
{
    x->probing = false;
    if (x->fails < UINT32_MAX)
        x->fails++;
    if (x->dead) {
        /* A failed probe: left alone for another period. */
        x->until_ms = now_ms + dead_ms;
        return false;
    }
    if (x->fails < threshold)
        return false;
    x->dead = true;
    x->since_ms = now_ms;
    x->until_ms = now_ms + dead_ms;
    return true;
}

bool dead_success(struct deadness *x)
{
    bool was = x->dead;
    x->fails = 0;
    x->dead = false;
    x->probing = false;
    x->until_ms = x->since_ms = 0;
    return was;
}

enum dead_state dead_state(const struct deadness *x, int64_t now_ms)
{
    if (!x->dead)
        return DEST_ALIVE;
    if (x->probing || now_ms < x->until_ms)
        return DEST_DEAD;
    return DEST_PROBE;
}
