/*
 * textfmt.h - the text formats several modules handle: strict UTF-8
 * (request parameters, result columns), RFC 3339 timestamps (parameter
 * values, the workspace's expire_time) and percent-encoding (paths, query
 * strings). One implementation, so the worker
 * accepts the same things everywhere.
 */
#ifndef LB_TEXTFMT_H
#define LB_TEXTFMT_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

/*
 * Length of the strict UTF-8 sequence starting s[0..len), len > 0: no
 * overlong forms, no surrogates, nothing above U+10FFFF. 0 if invalid.
 */
size_t utf8_sequence_len(const unsigned char *s, size_t len);

/*
 * RFC 3339 date-time, YYYY-MM-DDTHH:MM:SS[.frac](Z|+hh:mm|-hh:mm), 'T' and
 * 'Z' in either case, field ranges checked (seconds may be 60, a leap
 * second; year 0000 is refused: PostgreSQL has no year zero). On success
 * stores the time (a fraction truncated) and returns 0; else -1.
 */
int parse_rfc3339(const char *text, time_t *out);

/*
 * Percent-decodes src[0..len) into dst (room for len + 1 bytes; decoding
 * never grows); plus_is_space for query strings. Returns the decoded
 * length, or -1 on a malformed escape or a NUL byte, encoded or raw (a NUL
 * would silently cut the C string short).
 */
long url_decode_into(char *dst, const char *src, size_t len, int plus_is_space);
/* The same into a new string; NULL on a malformed input or no memory. */
char *url_decode(const char *src, size_t len, int plus_is_space);

/* The value of a hexadecimal digit (either case), or -1. */
int hex_digit_value(unsigned char c);

/* 8-4-4-4-12 hexadecimal digits (either case), nothing more. */
bool text_is_uuid(const char *s);

/*
 * Compares two decimal numbers written as JSON numbers (or with leading
 * zeros): -?digits[.digits][(e|E)[+-]digits]. Exact, whatever their digits
 * (where a double would round): <0, 0 or >0 as a is below, equal to or
 * above b. Exponents beyond +-10^15 count as +-10^15.
 */
int decimal_compare(const char *a, const char *b);

/* Writes v's decimal digits and a NUL into buf (TEXT_UINT_MAX bytes at
 * least); returns the number of digits. No printf on the hot paths. */
#define TEXT_UINT_MAX 21
size_t text_uint(char *buf, unsigned long long v);

#endif
