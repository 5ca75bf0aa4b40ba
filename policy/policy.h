/*
 * policy.h - public contract of the policy module (see DESIGN.md).
 *
 * Not yet implemented: policy_status() reports ERR_NOTYET.
 */
#ifndef CONVOY_POLICY_H
#define CONVOY_POLICY_H

/* ERR_NOTYET until the module is built. */
int policy_status(void);

#endif
