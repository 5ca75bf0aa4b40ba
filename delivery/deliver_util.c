/*
 * deliver_util.c - small pure helpers of the delivery engine: the domain of
 * an address, Postfix's delay notation for log lines, NOTIFY's meaning.
 *
 * Invariants: no allocation, bounded output, always NUL-terminated.
 */
#include <stdio.h>
#include <string.h>

#include "deliver_int.h"
#include "queue.h"

void deliver_format_delay(int64_t ms, char *out, size_t size)
{
    if (ms < 0)
        ms = 0;
    if (ms < 10000)
        snprintf(out, size, "%lld.%02lld", (long long)(ms / 1000), (long long)(ms % 1000 / 10));
    else if (ms < 100000)
        snprintf(out, size, "%lld.%lld", (long long)(ms / 1000), (long long)(ms % 1000 / 100));
    else
        snprintf(out, size, "%lld", (long long)(ms / 1000));
}

bool deliver_wants_failure_dsn(unsigned notify)
{
    return notify == 0 || (notify & QUEUE_NOTIFY_FAILURE) != 0;
}
