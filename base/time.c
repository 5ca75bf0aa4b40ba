/*
 * time.c - clocks, durations ("5d", "300s") and RFC 5322 dates.
 */
#include "base.h"

#include <stdio.h>
#include <string.h>

int64_t time_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t time_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const struct {
    char unit;
    int64_t seconds;
} units[] = {{'w', 604800}, {'d', 86400}, {'h', 3600}, {'m', 60}, {'s', 1}};

int time_parse_duration(const char *s, int64_t *seconds)
{
    if (!s || *s < '0' || *s > '9')
        return ERR_INVAL;
    int64_t v = 0;
    while (*s >= '0' && *s <= '9') {
        if (v > (INT64_MAX - 9) / 10)
            return ERR_INVAL;
        v = v * 10 + (*s++ - '0');
    }
    int64_t mult = 1;
    if (*s) {
        size_t i;
        for (i = 0; i < sizeof(units) / sizeof(units[0]); i++)
            if (*s == units[i].unit)
                break;
        if (i == sizeof(units) / sizeof(units[0]) || s[1])
            return ERR_INVAL;
        mult = units[i].seconds;
    }
    if (v > INT64_MAX / mult)
        return ERR_INVAL;
    *seconds = v * mult;
    return 0;
}

void time_format_duration(int64_t seconds, char *out, size_t size)
{
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (seconds != 0 && seconds % units[i].seconds == 0) {
            snprintf(out, size, "%lld%c", (long long)(seconds / units[i].seconds), units[i].unit);
            return;
        }
    }
    snprintf(out, size, "%llds", (long long)seconds);
}

void time_format_rfc5322(time_t t, char *out, size_t size)
{
    static const char *days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    struct tm tm;
    localtime_r(&t, &tm);
    long off = tm.tm_gmtoff / 60;
    char sign = off < 0 ? '-' : '+';
    if (off < 0)
        off = -off;
    /* Names are written by hand: strftime's %a/%b follow the locale. */
    snprintf(out, size, "%s, %d %s %d %02d:%02d:%02d %c%02ld%02ld", days[tm.tm_wday], tm.tm_mday,
             months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec, sign, off / 60,
             off % 60);
}
