/*
 * queue.c - placeholder for the queue module; every entry point says "not yet".
 */
#include "queue.h"

#include "base.h"

int queue_status(void)
{
    return ERR_NOTYET;
}
