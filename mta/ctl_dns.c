/*
 * ctl_dns.c - convoyctl dns: placeholder, says "not yet".
 */
#include <stdio.h>

#include "mta.h"

int ctl_dns(struct conf *c, int argc, char **argv)
{
    (void)c;
    (void)argc;
    (void)argv;
    fprintf(stderr, "convoyctl: dns: not yet implemented\n");
    return 1;
}
