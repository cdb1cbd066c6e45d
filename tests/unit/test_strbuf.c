/*
 * test_strbuf.c - the growable buffer.
 */
#include <stdlib.h>
#include <string.h>

#include "strbuf.h"
#include "unit.h"

static void
test_append_and_format(void)
{
	struct strbuf sb;

	strbuf_init(&sb);
	strbuf_append_str(&sb, "abc");
	strbuf_appendf(&sb, "-%d-", 42);
	strbuf_append(&sb, "xyz", 2);
	CU_ASSERT_FALSE(strbuf_failed(&sb));
	CU_ASSERT_EQUAL(sb.len, 9);
	CU_ASSERT_STRING_EQUAL(sb.data, "abc-42-xy");
	strbuf_free(&sb, true);
	CU_ASSERT_PTR_NULL(sb.data);
}

static void
test_growth_past_initial_capacity(void)
{
	struct strbuf sb;
	char chunk[100];
	size_t len;
	char *out;

	memset(chunk, 'a', sizeof(chunk));
	strbuf_init(&sb);
	for (int i = 0; i < 1000; i++)
		strbuf_append(&sb, chunk, sizeof(chunk));
	CU_ASSERT_EQUAL(sb.len, 100000);
	out = strbuf_detach(&sb, &len);
	CU_ASSERT_EQUAL(len, 100000);
	CU_ASSERT_EQUAL(out[99999], 'a');
	CU_ASSERT_EQUAL(out[100000], '\0');
	CU_ASSERT_PTR_NULL(sb.data);
	free(out);
}

static void
test_append_uint_and_grow(void)
{
	struct strbuf sb;

	strbuf_init(&sb);
	CU_ASSERT_TRUE(strbuf_grow(&sb, 300));
	CU_ASSERT_TRUE(sb.cap >= 301);
	CU_ASSERT_EQUAL(sb.len, 0);
	strbuf_append_uint(&sb, 0);
	strbuf_append(&sb, " ", 1);
	strbuf_append_uint(&sb, 200);
	strbuf_append(&sb, " ", 1);
	strbuf_append_uint(&sb, 18446744073709551615ULL);
	CU_ASSERT_STRING_EQUAL(sb.data, "0 200 18446744073709551615");
	CU_ASSERT_FALSE(strbuf_grow(&sb, (size_t)-1));   /* cannot: the buffer fails */
	CU_ASSERT_TRUE(strbuf_failed(&sb));
	/* A reset starts over: an error body can replace a result that failed. */
	strbuf_reset(&sb);
	CU_ASSERT_FALSE(strbuf_failed(&sb));
	strbuf_append_str(&sb, "{}");
	CU_ASSERT_FALSE(strbuf_failed(&sb));
	CU_ASSERT_STRING_EQUAL(sb.data, "{}");
	strbuf_free(&sb, false);
}

void
register_strbuf_tests(void)
{
	CU_pSuite s = CU_add_suite("strbuf", NULL, NULL);

	CU_add_test(s, "append and format", test_append_and_format);
	CU_add_test(s, "growth past initial capacity", test_growth_past_initial_capacity);
	CU_add_test(s, "append_uint, grow", test_append_uint_and_grow);
}
