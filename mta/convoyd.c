/* under construction */
int main(void) { return 0; }
