/*
 * submission.c - placeholder until the SMTP server lands: no listener.
 */
#include "mta.h"

int submission_start(struct mta *m, struct buf *err)
{
    (void)m;
    (void)err;
    log_warn("smtpd", "SMTP server not yet implemented: no listener started");
    return 0;
}

void submission_stop(struct mta *m)
{
    (void)m;
}

size_t submission_active(const struct mta *m)
{
    (void)m;
    return 0;
}

void submission_close(struct mta *m)
{
    (void)m;
}

int submission_reload(struct mta *m, struct conf *c, struct buf *err)
{
    (void)m;
    (void)c;
    (void)err;
    return 0;
}
