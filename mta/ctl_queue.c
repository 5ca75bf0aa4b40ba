/*
 * ctl_queue.c - convoyctl queue: placeholder, says "not yet".
 */
#include <stdio.h>

#include "mta.h"

int ctl_queue(struct conf *c, int argc, char **argv)
{
    (void)c;
    (void)argc;
    (void)argv;
    fprintf(stderr, "convoyctl: queue: not yet implemented\n");
    return 1;
}
