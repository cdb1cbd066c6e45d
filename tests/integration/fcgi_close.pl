#!/usr/bin/perl
# fcgi_close.pl SOCKET METHOD URI [CONTENT_LENGTH BODY [no-end]]
#
# One FastCGI request on a unix socket, as a web server without keep-conn
# sends it: BEGIN_REQUEST, the params, then the body and the empty STDIN
# record that ends it -- unless BODY is shorter than CONTENT_LENGTH, in
# which case the input is left unfinished, or "no-end" is given (a peer
# that withholds the end record). Reads the response to its end
# (EOF), keeping this side open, then writes one byte to learn how the
# responder ended the connection. Prints the response's first line, then
# "closed" (the responder closed its socket: the write fails with EPIPE)
# or "open" (it only shut down its write side and still reads, waiting
# for us to close first).
use strict;
use warnings;
use Socket;

my ($path, $method, $uri, $length, $body, $no_end) = @ARGV;
die "usage: $0 SOCKET METHOD URI [CONTENT_LENGTH BODY [no-end]]\n" unless defined $uri;
$body = '' unless defined $body;
$SIG{PIPE} = 'IGNORE';
alarm 20;

sub record {
	my ($type, $content) = @_;
	return pack('CCnnCC', 1, $type, 1, length($content), 0, 0) . $content;
}

sub pair {
	my ($name, $value) = @_;
	my $len = sub { $_[0] < 128 ? pack('C', $_[0]) : pack('N', $_[0] | 0x80000000) };
	return $len->(length $name) . $len->(length $value) . $name . $value;
}

my %params = (REQUEST_METHOD => $method, REQUEST_URI => $uri, SCRIPT_NAME => $uri,
	QUERY_STRING => '', SERVER_PROTOCOL => 'HTTP/1.1', GATEWAY_INTERFACE => 'CGI/1.1');
$params{CONTENT_LENGTH} = $length if defined $length;
my $out = record(1, pack('nCx5', 1, 0));    # BEGIN_REQUEST: responder, no keep-conn
$out .= record(4, join('', map { pair($_, $params{$_}) } sort keys %params)) . record(4, '');
$out .= record(5, $body) if length $body;
$out .= record(5, '') unless (defined $length && length($body) < $length) || defined $no_end;

socket(my $s, PF_UNIX, SOCK_STREAM, 0) or die "socket: $!\n";
connect($s, pack_sockaddr_un($path)) or die "connect $path: $!\n";
defined(syswrite($s, $out)) or die "write: $!\n";

my $in = '';
while (1) {
	my $n = sysread($s, my $buf, 65536);
	die "read: $!\n" unless defined $n;
	last if $n == 0;
	$in .= $buf;
}
my $stdout = '';
while (length($in) >= 8) {
	my ($type, $clen, $pad) = (unpack('CCnnCC', $in))[1, 3, 4];
	$stdout .= substr($in, 8, $clen) if $type == 6;
	substr($in, 0, 8 + $clen + $pad) = '';
}
my ($first) = split /\r?\n/, $stdout;
print defined $first ? $first : '(no response)', "\n";
print defined(syswrite($s, 'x')) ? "open\n" : "closed\n";
close $s;
