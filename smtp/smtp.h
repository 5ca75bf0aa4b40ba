/*
 * smtp.h - public contract of the smtp module (see DESIGN.md).
 *
 * Not yet implemented: smtp_status() reports ERR_NOTYET.
 */
#ifndef CONVOY_SMTP_H
#define CONVOY_SMTP_H

/* ERR_NOTYET until the module is built. */
int smtp_status(void);

#endif
