/*
 * smtp.h - public contract of the smtp module: SMTP server sessions
 * (submission) and SMTP client sessions (delivery), their parsers and
 * dot-stuffing. The module knows nothing of the queue, DNS or MTA-STS: the
 * server hands a finished message to its owner's callback and waits for the
 * answer; the client is told which TLS it must have and reports results.
 */
#ifndef CONVOY_SMTP_H
#define CONVOY_SMTP_H

#include "base.h"

/* ==== shared ========================================================== */

/* ==== server side ===================================================== */

/* ==== client side ===================================================== */

#endif
