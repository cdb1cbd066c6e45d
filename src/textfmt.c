/*
 * textfmt.c - strict UTF-8, RFC 3339 and percent-decoding (see textfmt.h).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "textfmt.h"

/*
 * Length of the strict UTF-8 sequence starting s[0..len), len > 0: no
 * overlong forms, no surrogates, nothing above U+10FFFF. 0 if invalid.
 */
size_t
utf8_sequence_len(const unsigned char *s, size_t len)
{
	unsigned char lo = 0x80, hi = 0xbf;
	size_t n;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		n = 2;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		n = 3;
		lo = s[0] == 0xe0 ? 0xa0 : 0x80;
		hi = s[0] == 0xed ? 0x9f : 0xbf;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		n = 4;
		lo = s[0] == 0xf0 ? 0x90 : 0x80;
		hi = s[0] == 0xf4 ? 0x8f : 0xbf;
	} else {
		return 0;
	}
	if (len < n || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t k = 2; k < n; k++)
		if (s[k] < 0x80 || s[k] > 0xbf)
			return 0;
	return n;
}

static bool
take_digits(const char **p, int n, int *out)
{
	int v = 0;

	for (int i = 0; i < n; i++) {
		char c = (*p)[i];

		if (c < '0' || c > '9')
			return false;
		v = v * 10 + (c - '0');
	}
	*p += n;
	*out = v;
	return true;
}

static bool
take_char(const char **p, char c)
{
	if (**p != c)
		return false;
	(*p)++;
	return true;
}

static int
days_in_month(int year, int month)
{
	static const int days[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;

	return month == 2 && leap ? 29 : days[month - 1];
}

/* Parses the zone: Z (or z), or +hh:mm / -hh:mm, into seconds east of UTC. */
static bool
take_zone(const char **p, long *offset_s)
{
	int sign, oh, om;

	if (**p == 'Z' || **p == 'z') {
		(*p)++;
		*offset_s = 0;
		return true;
	}
	if (**p != '+' && **p != '-')
		return false;
	sign = **p == '-' ? -1 : 1;
	(*p)++;
	if (!take_digits(p, 2, &oh) || !take_char(p, ':') || !take_digits(p, 2, &om))
		return false;
	if (oh > 23 || om > 59)
		return false;
	*offset_s = sign * (oh * 3600L + om * 60L);
	return true;
}

int
parse_rfc3339(const char *text, time_t *out)
{
	const char *p = text;
	int year, mon, day, hour, min, sec;
	long offset_s;
	struct tm tm;

	if (text == NULL)
		return -1;
	if (!take_digits(&p, 4, &year) || !take_char(&p, '-') ||
	    !take_digits(&p, 2, &mon) || !take_char(&p, '-') ||
	    !take_digits(&p, 2, &day))
		return -1;
	if (*p != 'T' && *p != 't')
		return -1;
	p++;
	if (!take_digits(&p, 2, &hour) || !take_char(&p, ':') ||
	    !take_digits(&p, 2, &min) || !take_char(&p, ':') ||
	    !take_digits(&p, 2, &sec))
		return -1;
	if (*p == '.') {
		/* A fraction is truncated: expiring a fraction early is safe. */
		p++;
		if (*p < '0' || *p > '9')
			return -1;
		while (*p >= '0' && *p <= '9')
			p++;
	}
	if (!take_zone(&p, &offset_s) || *p != '\0')
		return -1;
	if (year < 1 || mon < 1 || mon > 12 || day < 1 || day > days_in_month(year, mon) ||
	    hour > 23 || min > 59 || sec > 60)	/* 60: a leap second */
		return -1;
	memset(&tm, 0, sizeof(tm));
	tm.tm_year = year - 1900;
	tm.tm_mon = mon - 1;
	tm.tm_mday = day;
	tm.tm_hour = hour;
	tm.tm_min = min;
	tm.tm_sec = sec;
	*out = timegm(&tm) - (time_t)offset_s;
	return 0;
}

int
hex_digit_value(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Decodes src[0..len) into dst (room for len + 1 bytes; decoding never
 * grows). Returns the decoded length, or -1 on a malformed escape or a NUL
 * byte, encoded or raw: a NUL would silently cut the C string short.
 */
long
url_decode_into(char *dst, const char *src, size_t len, int plus_is_space)
{
	size_t i, o = 0;
	int hi, lo;

	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)src[i];

		if (c == '%') {
			if (len - i < 3)
				return -1;
			hi = hex_digit_value((unsigned char)src[i + 1]);
			lo = hex_digit_value((unsigned char)src[i + 2]);
			if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
				return -1;
			dst[o++] = (char)(hi << 4 | lo);
			i += 2;
		} else if (c == '+' && plus_is_space) {
			dst[o++] = ' ';
		} else if (c == '\0') {
			return -1;
		} else {
			dst[o++] = (char)c;
		}
	}
	dst[o] = '\0';
	return (long)o;
}

char *
url_decode(const char *src, size_t len, int plus_is_space)
{
	char *dst;

	if (len == SIZE_MAX)
		return NULL;
	dst = malloc(len + 1);
	if (dst == NULL)
		return NULL;
	if (url_decode_into(dst, src, len, plus_is_space) < 0) {
		free(dst);
		return NULL;
	}
	return dst;
}

size_t
text_uint(char *buf, unsigned long long v)
{
	char digits[TEXT_UINT_MAX];
	size_t i = sizeof(digits), n;

	do {
		digits[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v > 0);
	n = sizeof(digits) - i;
	memcpy(buf, digits + i, n);
	buf[n] = '\0';
	return n;
}

bool
text_is_uuid(const char *s)
{
	for (size_t i = 0; i < 36; i++) {
		bool dash = i == 8 || i == 13 || i == 18 || i == 23;

		if (s[i] == '\0' || (dash ? s[i] != '-' : hex_digit_value((unsigned char)s[i]) < 0))
			return false;
	}
	return s[36] == '\0';
}

/* ---- exact decimal comparison ---- */

#define DECIMAL_EXP_MAX 1000000000000000LL

/* A decimal as its significant digits (d[0] != '0' unless it is zero)
 * and where its point is: value = 0.d x 10^point, negated if negative. */
struct decimal {
	bool negative, zero;
	const char *intp, *frac;	/* the digits before and after the point */
	size_t int_len, frac_len, first;	/* first: index of the first nonzero digit */
	long long point;
};

static char
decimal_digit(const struct decimal *d, size_t k)
{
	if (k < d->int_len)
		return d->intp[k];
	return k - d->int_len < d->frac_len ? d->frac[k - d->int_len] : '0';
}

static long long
decimal_exponent(const char *p)
{
	bool negative = *p == '-';
	long long e = 0;

	if (*p == '+' || *p == '-')
		p++;
	for (; *p >= '0' && *p <= '9'; p++) {
		if (e < DECIMAL_EXP_MAX)
			e = e * 10 + (*p - '0');
	}
	if (e > DECIMAL_EXP_MAX)
		e = DECIMAL_EXP_MAX;
	return negative ? -e : e;
}

static void
decimal_parse(const char *s, struct decimal *d)
{
	memset(d, 0, sizeof(*d));
	d->negative = *s == '-';
	s += d->negative;
	d->intp = s;
	while (*s >= '0' && *s <= '9')
		s++;
	d->int_len = (size_t)(s - d->intp);
	if (*s == '.') {
		d->frac = ++s;
		while (*s >= '0' && *s <= '9')
			s++;
		d->frac_len = (size_t)(s - d->frac);
	}
	while (d->first < d->int_len + d->frac_len && decimal_digit(d, d->first) == '0')
		d->first++;
	d->zero = d->first == d->int_len + d->frac_len;
	if (*s == 'e' || *s == 'E')
		d->point = decimal_exponent(s + 1);
	d->point += (long long)d->int_len - (long long)d->first;
}

/* Compares the magnitudes of two nonzero decimals. */
static int
decimal_compare_magnitude(const struct decimal *a, const struct decimal *b)
{
	size_t na = a->int_len + a->frac_len - a->first, nb = b->int_len + b->frac_len - b->first;
	char da, db;

	if (a->point != b->point)
		return a->point < b->point ? -1 : 1;
	for (size_t k = 0; k < na || k < nb; k++) {
		da = k < na ? decimal_digit(a, a->first + k) : '0';
		db = k < nb ? decimal_digit(b, b->first + k) : '0';
		if (da != db)
			return da < db ? -1 : 1;
	}
	return 0;
}

int
decimal_compare(const char *a, const char *b)
{
	struct decimal x, y;
	int sx, sy;

	decimal_parse(a, &x);
	decimal_parse(b, &y);
	sx = x.zero ? 0 : (x.negative ? -1 : 1);
	sy = y.zero ? 0 : (y.negative ? -1 : 1);
	if (sx != sy || sx == 0)
		return sx - sy;
	return sx * decimal_compare_magnitude(&x, &y);
}
