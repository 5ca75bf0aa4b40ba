/* under construction */
typedef int placeholder_t;
