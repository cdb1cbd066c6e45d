#!/usr/bin/perl
# tcp_relay.pl LISTEN_PORT TARGET_PORT - relays TCP connections from
# 127.0.0.1:LISTEN_PORT to 127.0.0.1:TARGET_PORT, byte for byte, in one
# process. Killing it cuts every connection through it at once, with no
# answer from the far side: what a test needs to lose the worker's
# connection to PostgreSQL in the middle of a statement, as a network
# failure would (test_db_recovery.sh).
use strict;
use warnings;
use IO::Select;
use IO::Socket::INET;

my ($listen_port, $target_port) = @ARGV;
die "usage: tcp_relay.pl LISTEN_PORT TARGET_PORT\n"
	unless defined $target_port && $listen_port =~ /^\d+$/ && $target_port =~ /^\d+$/;
my $listener = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $listen_port,
	Listen => 16, ReuseAddr => 1) or die "tcp_relay: listen on $listen_port: $!\n";
my $select = IO::Select->new($listener);
my %peer;

sub drop {
	my ($fh) = @_;
	my $other = delete $peer{$fh};
	for my $s (grep { defined } $fh, $other) {
		delete $peer{$s};
		$select->remove($s);
		close $s;
	}
}

while (1) {
	for my $fh ($select->can_read) {
		if ($fh == $listener) {
			my $client = $listener->accept or next;
			my $server = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $target_port);
			if (!$server) {
				close $client;
				next;
			}
			$peer{$client} = $server;
			$peer{$server} = $client;
			$select->add($client, $server);
			next;
		}
		my $other = $peer{$fh} or next;	# dropped earlier in this round
		my $n = sysread($fh, my $buf, 65536);
		if (!$n) {
			drop($fh);
			next;
		}
		for (my $off = 0; $off < $n;) {
			my $w = syswrite($other, $buf, $n - $off, $off);
			if (!defined $w) {
				drop($fh);
				last;
			}
			$off += $w;
		}
	}
}
