# Hawking: the two set-up commands are `make demo` and `make test`.
CARGO ?= cargo

.PHONY: deps build release demo test bench fmt lint fixtures

deps:
	@tests/setup/install-deps.sh

build: deps
	$(CARGO) build

release: deps
	$(CARGO) build --release

# The full pipeline on embedded defaults: softflowd exports the bundled capture through real
# sockets into `hawking serve`, then the stored flows are queried and printed.
demo: release
	@tests/demo/demo.sh

test: deps
	$(CARGO) test --workspace --all-targets

# Every benchmark, release build; prints the tables recorded in BENCHMARKS.md.
bench: release
	@tests/bench/run-all.sh

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fixtures:
	python3 fixtures/make_traffic_pcap.py fixtures/traffic.pcap
