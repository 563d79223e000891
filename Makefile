# vmd for Linux. `make demo` boots a demo VM; `make test` runs every test.
PREFIX ?= /usr/local
DESTDIR ?=
SWIFT ?= swift
CONFIG ?= debug
SWIFTFLAGS ?=
BIN = .build/$(CONFIG)

.PHONY: all deps build guests test demo install uninstall fuzz bench lint clean

all: build

deps:
	@.ci/install-deps

guests:
	$(MAKE) -C guests/vmtest

build: deps guests
	$(SWIFT) build -c $(CONFIG) $(SWIFTFLAGS)

# Unit tests, golden config tests and the integration tests (real vmd,
# vmctl, KVM and the vmtest guest; QEMU as the reference). Tests that need
# something this machine lacks skip and say why.
test: build
	$(SWIFT) test -c $(CONFIG) $(SWIFTFLAGS) --disable-swift-testing

demo: build
	guests/demo.sh $(BIN)

fuzz: deps
	Tests/Fuzz/run.sh

# Benchmarks measure the release build (debug Swift in the device processes
# costs 1.5-3x); they print tables, they assert nothing.
bench: deps guests
	$(SWIFT) build -c release $(SWIFTFLAGS)
	bench/run.sh .build/release

# mandoc: -Wwarning, since -Wstyle also notes that the pages citing each
# other are not installed yet. The unit is checked as installed: @PREFIX@
# filled in with a prefix whose sbin/vmd is the built binary.
lint:
	mandoc -Tlint -Wwarning man/vmd.8 man/vmctl.8 man/vm.conf.5
	tmp=$$(mktemp -d) && mkdir $$tmp/sbin && ln -s $(CURDIR)/$(BIN)/vmd $$tmp/sbin/vmd && \
		ln -s $(CURDIR)/$(BIN)/vmctl $$tmp/sbin/vmctl && \
		sed "s,@PREFIX@,$$tmp,g" etc/systemd/vmd.service > $$tmp/vmd.service && \
		systemd-analyze verify --man=no $$tmp/vmd.service; rc=$$?; rm -rf $$tmp; exit $$rc

install: build
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(PREFIX)/share/man/man8 \
		$(DESTDIR)$(PREFIX)/share/man/man5 $(DESTDIR)/etc/systemd/system
	install -m 755 $(BIN)/vmd $(DESTDIR)$(PREFIX)/sbin/vmd
	install -m 755 $(BIN)/vmctl $(DESTDIR)$(PREFIX)/sbin/vmctl
	install -m 644 man/vmd.8 man/vmctl.8 $(DESTDIR)$(PREFIX)/share/man/man8/
	install -m 644 man/vm.conf.5 $(DESTDIR)$(PREFIX)/share/man/man5/
	sed 's,@PREFIX@,$(PREFIX),g' etc/systemd/vmd.service > $(DESTDIR)/etc/systemd/system/vmd.service
	[ -e $(DESTDIR)/etc/vm.conf ] || install -m 644 etc/vm.conf $(DESTDIR)/etc/vm.conf
	@if [ -z "$(DESTDIR)" ] && ! getent passwd _vmd >/dev/null; then \
		useradd --system --no-create-home --home-dir /nonexistent \
			--shell /usr/sbin/nologin --comment "vmd unprivileged user" _vmd; fi

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/sbin/vmd $(DESTDIR)$(PREFIX)/sbin/vmctl \
		$(DESTDIR)$(PREFIX)/share/man/man8/vmd.8 $(DESTDIR)$(PREFIX)/share/man/man8/vmctl.8 \
		$(DESTDIR)$(PREFIX)/share/man/man5/vm.conf.5 $(DESTDIR)/etc/systemd/system/vmd.service

clean:
	rm -rf .build build
	$(MAKE) -C guests/vmtest clean

# Debian package: vmd_VERSION_amd64.deb in the top directory. vmd and vmctl
# are built in release mode with the Swift standard library linked
# statically (a separate build directory: the flag rebuilds everything), so
# they need only Debian's shared libraries; debhelper does the rest (see
# debian/rules). `lintian` checks the result.
DEB_SCRATCH = .build-static
DEB_VERSION = $(shell dpkg-parsechangelog -l debian/changelog -S Version)
DEB_STAGE = build/deb/vmd-$(DEB_VERSION)
DEB = vmd_$(DEB_VERSION)_amd64.deb

.PHONY: static deb
# -z now: full RELRO (no lazy binding), as Debian's hardening flags ask.
static: deps
	$(SWIFT) build -c release --static-swift-stdlib -Xlinker -z -Xlinker now \
		--scratch-path $(DEB_SCRATCH) $(SWIFTFLAGS)

deb: static
	@$(MAKE) --no-print-directory $(DEB)

# Remade only when a binary or a packaged file changed; in place only once
# lintian passed.
$(DEB): $(DEB_SCRATCH)/release/vmd $(DEB_SCRATCH)/release/vmctl $(wildcard debian/* debian/source/*) \
		man/vmd.8 man/vmctl.8 man/vm.conf.5 etc/vm.conf etc/systemd/vmd.service
	rm -rf build/deb && mkdir -p $(DEB_STAGE)/usr/sbin $(DEB_STAGE)/etc $(DEB_STAGE)/man
	cp -r debian $(DEB_STAGE)/
	install -m 755 $(DEB_SCRATCH)/release/vmd $(DEB_SCRATCH)/release/vmctl $(DEB_STAGE)/usr/sbin/
	install -m 644 man/vmd.8 man/vmctl.8 man/vm.conf.5 $(DEB_STAGE)/man/
	install -m 644 etc/vm.conf $(DEB_STAGE)/etc/vm.conf
	sed 's,@PREFIX@,/usr,g' etc/systemd/vmd.service > $(DEB_STAGE)/debian/vmd.service
	cd $(DEB_STAGE) && dpkg-buildpackage -b -us -uc --no-sign
	lintian --fail-on error build/deb/$(DEB)
	cp build/deb/$(DEB) $(DEB)
