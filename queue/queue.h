/*
 * queue.h - public contract of the queue module (see DESIGN.md).
 *
 * Not yet implemented: queue_status() reports ERR_NOTYET.
 */
#ifndef CONVOY_QUEUE_H
#define CONVOY_QUEUE_H

/* ERR_NOTYET until the module is built. */
int queue_status(void);

#endif
