# Thin aliases for ./dev, which is the real entry point (README, CI).
.PHONY: check test up setup bench
check:
	./dev check
test:
	./dev test
up:
	./dev up
setup:
	./dev setup
bench:  # BENCH_ARGS=--full for the long profile
	./dev bench $(BENCH_ARGS)
