/* placeholder so the library has a source until the first real file lands */
typedef int smtp_placeholder_t;
