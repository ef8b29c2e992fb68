# Thin aliases for ./dev, which is the real entry point (README, CI).
.PHONY: check test up setup
check:
	./dev check
test:
	./dev test
up:
	./dev up
setup:
	./dev setup
