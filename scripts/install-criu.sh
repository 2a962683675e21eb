#!/usr/bin/env bash
# Build CRIU 4.x from Debian trixie's source package and install the binary
# as /usr/local/sbin/criu (nothing else is installed system-wide).
#
# Why: Debian 12's criu 3.17 fails on current kernels ("vdso: Unexpected rt
# vDSO area bounds"); 4.x works. The trixie source is fetched through a
# private apt configuration (its own sources list, lists and cache under a
# temporary directory), so trixie never appears in the host's apt sources.
# Build dependencies are installed from the host's own (bookworm) archive.
#
# Warren's patches (below, as heredocs) are applied to the source before the
# build: 0001 lets CRIU dump TCP/UDP sockets on kernels where getsockopt()
# of SO_PASSCRED/SO_PASSSEC on them fails with EOPNOTSUPP (6.18 here; stock
# 4.1.1 stops with "sockets: Can't get 1:16 opt: Operation not supported").
# 0002 opens a task's namespaces before the user-namespace ownership check
# drops privileges: a restored sandbox's init (never exec'd since the
# restore, so its memory belongs to the host's user namespace) is not
# dumpable, and its /proc/PID/ns files are refused to the unprivileged id
# ("Can't open PID/ns/net on procfs"); without it, a restored sandbox could
# not be checkpointed again (pause after resume, fork of a fork).
# 0003-0005 make Warren's checkpoints and restores faster; each adds an
# option, and without it CRIU behaves as before (Warren passes them only to
# a CRIU that takes them, crates/warren-runtime/src/native/criu_probe.rs).
# 0003 `--kdat-cache-dir DIR`: CRIU caches its kernel-feature probes
# (~20 ms a run) in /run/criu.kdat only when /run is a tmpfs; Warren keeps
# them in a root-only directory on a tmpfs that is there anyway
# (/run/warren/criu, or /dev/shm/warren-criu where /run is not a tmpfs;
# nothing is mounted for it). A cache there is read only
# from a tmpfs, and each run writes its own temporary file before the
# atomic rename (concurrent runs; a run killed mid-save blocks no later one).
# 0004 `--action-script-only ACTIONS`: run the action script only for
# these actions (Warren's restore hook needs setup-namespaces; the six
# other fork+execs cost ~2 ms each). 0005 `--tmpfs-no-gzip`: the
# sandbox's tmpfs mounts (/tmp, /dev, /dev/shm, masked paths) are dumped
# as plain tars, without a gzip process on either side; a restore with it
# still takes gzipped images (gzip's magic decides).
#
# Idempotent: does nothing when /usr/local/sbin/criu already reports 4.x AND
# its marker file /usr/local/sbin/criu.warren-patches names the SHA-256 of
# exactly the patches below; otherwise (an unpatched or differently patched
# criu) it rebuilds and reinstalls.
# Needs root and network access to Debian's mirrors only.
#
# Usage: scripts/install-criu.sh
set -euo pipefail

log() { printf 'install-criu: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
trap 'die "failed at line $LINENO (exit $?)"' ERR

dest=/usr/local/sbin/criu
marker=$dest.warren-patches
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

# Warren's patches to CRIU 4.1.1, applied with `patch -p1` in order.
write_patches() {
    local dir=$1
    mkdir -p "$dir"
    cat >"$dir/0001-sockets-passcred-eopnotsupp.patch" <<'PATCH'
--- a/criu/sockets.c
+++ b/criu/sockets.c
@@ -637,6 +637,31 @@
 	return 0;
 }
 
+/*
+ * warren: SO_PASSCRED and SO_PASSSEC only mean something on unix (and
+ * netlink) sockets. Recent kernels (6.18 here) fail getsockopt() of them on
+ * other sockets (TCP, UDP, ...) with EOPNOTSUPP; treat that as "off".
+ */
+static int dump_opt_bool_or_off(int sk, int level, int name, int *val)
+{
+	socklen_t aux = sizeof(*val);
+
+	if (getsockopt(sk, level, name, val, &aux) < 0) {
+		if (errno == EOPNOTSUPP) {
+			pr_debug("%d:%d opt not supported on this socket, treated as off\n", level, name);
+			*val = 0;
+			return 0;
+		}
+		pr_perror("Can't get %d:%d opt", level, name);
+		return -1;
+	}
+	if (aux != sizeof(*val)) {
+		pr_err("Len mismatch on %d:%d : %d, want %zu\n", level, name, aux, sizeof(*val));
+		return -1;
+	}
+	return 0;
+}
+
 int dump_socket_opts(int sk, SkOptsEntry *soe)
 {
 	int ret = 0, val;
@@ -676,11 +701,11 @@
 	soe->so_reuseport = val ? true : false;
 	soe->has_so_reuseport = true;
 
-	ret |= dump_opt(sk, SOL_SOCKET, SO_PASSCRED, &val);
+	ret |= dump_opt_bool_or_off(sk, SOL_SOCKET, SO_PASSCRED, &val);
 	soe->has_so_passcred = true;
 	soe->so_passcred = val ? true : false;
 
-	ret |= dump_opt(sk, SOL_SOCKET, SO_PASSSEC, &val);
+	ret |= dump_opt_bool_or_off(sk, SOL_SOCKET, SO_PASSSEC, &val);
 	soe->has_so_passsec = true;
 	soe->so_passsec = val ? true : false;
 
PATCH
    cat >"$dir/0002-userns-check-opens-namespaces-first.patch" <<'PATCH'
--- a/criu/namespaces.c
+++ b/criu/namespaces.c
@@ -924,6 +924,27 @@
 		struct __user_cap_header_struct hdr;
 		uid_t uid;
 		gid_t gid;
+		/*
+		 * Open the namespaces while still privileged: a task whose mm
+		 * belongs to an ancestor user namespace (a restored task never
+		 * exec'd since) and that is not dumpable refuses /proc/PID/ns
+		 * to the unprivileged id below. The check is about entering.
+		 */
+		int userfd, netfd = -1, utsfd = -1, timefd = -1, ipcfd = -1, mntfd = -1;
+
+		userfd = open_proc(pid, "ns/user");
+		if (userfd < 0)
+			exit(1);
+		if ((root_ns_mask & CLONE_NEWNET) && (netfd = open_proc(pid, "ns/net")) < 0)
+			exit(1);
+		if ((root_ns_mask & CLONE_NEWUTS) && (utsfd = open_proc(pid, "ns/uts")) < 0)
+			exit(1);
+		if ((root_ns_mask & CLONE_NEWTIME) && (timefd = open_proc(pid, "ns/time")) < 0)
+			exit(1);
+		if ((root_ns_mask & CLONE_NEWIPC) && (ipcfd = open_proc(pid, "ns/ipc")) < 0)
+			exit(1);
+		if ((root_ns_mask & CLONE_NEWNS) && (mntfd = open_proc(pid, "ns/mnt")) < 0)
+			exit(1);
 
 		uid = host_uid(0);
 		gid = host_gid(0);
@@ -972,18 +993,18 @@
 		 * namespaces were created from the target userns.
 		 */
 
-		if (switch_ns(pid, &user_ns_desc, NULL))
+		if (switch_ns_by_fd(userfd, &user_ns_desc, NULL))
 			exit(1);
 
-		if ((root_ns_mask & CLONE_NEWNET) && switch_ns(pid, &net_ns_desc, NULL))
+		if (netfd >= 0 && switch_ns_by_fd(netfd, &net_ns_desc, NULL))
 			exit(1);
-		if ((root_ns_mask & CLONE_NEWUTS) && switch_ns(pid, &uts_ns_desc, NULL))
+		if (utsfd >= 0 && switch_ns_by_fd(utsfd, &uts_ns_desc, NULL))
 			exit(1);
-		if ((root_ns_mask & CLONE_NEWTIME) && switch_ns(pid, &time_ns_desc, NULL))
+		if (timefd >= 0 && switch_ns_by_fd(timefd, &time_ns_desc, NULL))
 			exit(1);
-		if ((root_ns_mask & CLONE_NEWIPC) && switch_ns(pid, &ipc_ns_desc, NULL))
+		if (ipcfd >= 0 && switch_ns_by_fd(ipcfd, &ipc_ns_desc, NULL))
 			exit(1);
-		if ((root_ns_mask & CLONE_NEWNS) && switch_ns(pid, &mnt_ns_desc, NULL))
+		if (mntfd >= 0 && switch_ns_by_fd(mntfd, &mnt_ns_desc, NULL))
 			exit(1);
 		exit(0);
 	}
PATCH
    cat >"$dir/0003-kdat-cache-dir.patch" <<'PATCH'
--- a/criu/config.c
+++ b/criu/config.c
@@ -703,6 +703,7 @@
 		BOOL_OPT("mntns-compat-mode", &opts.mntns_compat_mode),
 		BOOL_OPT("unprivileged", &opts.unprivileged),
 		BOOL_OPT("ghost-fiemap", &opts.ghost_fiemap),
+		{ "kdat-cache-dir", required_argument, 0, 1101 },
 		{},
 	};
 
@@ -1043,6 +1044,9 @@
 				return 1;
 			}
 			break;
+		case 1101:
+			SET_CHAR_OPTS(kdat_cache_dir, optarg);
+			break;
 		case 'V':
 			pr_msg("Version: %s\n", CRIU_VERSION);
 			if (strcmp(CRIU_GITID, "0"))
--- a/criu/crtools.c
+++ b/criu/crtools.c
@@ -422,6 +422,7 @@
 	       "                        can be 'nftables' or 'iptables' (default).\n"
 	       "  --unprivileged        accept limitations when running as non-root\n"
 	       "                        consult documentation for further details\n"
+	       "  --kdat-cache-dir DIR  keep the kernel-feature cache in DIR (a tmpfs)\n"
 	       "\n"
 	       "* External resources support:\n"
 	       "  --external RES        dump objects from this list as external resources:\n"
--- a/criu/include/cr_options.h
+++ b/criu/include/cr_options.h
@@ -245,6 +245,8 @@
 	 * explicitly request it as it comes with many limitations.
 	 */
 	int unprivileged;
+	/* warren: where the kdat cache lives (a tmpfs directory); NULL: the default */
+	char *kdat_cache_dir;
 };
 
 extern struct cr_options opts;
--- a/criu/kerndat.c
+++ b/criu/kerndat.c
@@ -1189,7 +1189,9 @@
 	 * Note that XDG_RUNTIME_DIR is not always defined (e.g. when executing
 	 * via su/sudo).
 	 */
-	if (opts.unprivileged) {
+	if (opts.kdat_cache_dir) {
+		ret = asprintf(kdat_file, "%s/%s", opts.kdat_cache_dir, KERNDAT_CACHE_NAME);
+	} else if (opts.unprivileged) {
 		const char *cache_dir = getenv("XDG_RUNTIME_DIR");
 		if (!cache_dir) {
 			pr_warn("$XDG_RUNTIME_DIR not set. Cannot find location for kerndat file\n");
@@ -1232,6 +1234,21 @@
 		return 1;
 	}
 
+	/*
+	 * warren: a cache in a directory given by --kdat-cache-dir is
+	 * trusted only on a tmpfs (gone after a reboot, as the save side
+	 * requires); anything else is probed again.
+	 */
+	if (opts.kdat_cache_dir) {
+		struct statfs s;
+
+		if (fstatfs(fd, &s) < 0 || s.f_type != TMPFS_MAGIC) {
+			pr_warn("Ignoring kdat cache %s: not on a tmpfs\n", kdat_file);
+			close(fd);
+			return 1;
+		}
+	}
+
 	ret = read(fd, &kdat, sizeof(kdat));
 	if (ret < 0) {
 		pr_perror("Can't read kdat cache");
@@ -1261,7 +1278,15 @@
 	if (get_kerndat_filename(&kdat_file))
 		return;
 
-	ret = asprintf(&kdat_file_tmp, "%s.tmp", kdat_file);
+	/*
+	 * warren: in a --kdat-cache-dir, each run writes its own temporary
+	 * file (a run killed while saving leaves no name that stops every
+	 * later save); the rename below stays atomic.
+	 */
+	if (opts.kdat_cache_dir)
+		ret = asprintf(&kdat_file_tmp, "%s.%d.tmp", kdat_file, getpid());
+	else
+		ret = asprintf(&kdat_file_tmp, "%s.tmp", kdat_file);
 
 	if (unlikely(ret < 0)) {
 		pr_warn("Cannot allocate memory for kerndat file name\n");
@@ -1309,6 +1334,8 @@
 		pr_perror("Couldn't save %s", kdat_file);
 	unl:
 		unlink(kdat_file);
+		if (opts.kdat_cache_dir)
+			unlink(kdat_file_tmp);
 	}
 }
 
PATCH
    cat >"$dir/0004-action-script-only.patch" <<'PATCH'
--- a/criu/config.c
+++ b/criu/config.c
@@ -704,6 +704,7 @@
 		BOOL_OPT("unprivileged", &opts.unprivileged),
 		BOOL_OPT("ghost-fiemap", &opts.ghost_fiemap),
 		{ "kdat-cache-dir", required_argument, 0, 1101 },
+		{ "action-script-only", required_argument, 0, 1102 },
 		{},
 	};
 
@@ -1047,6 +1048,9 @@
 		case 1101:
 			SET_CHAR_OPTS(kdat_cache_dir, optarg);
 			break;
+		case 1102:
+			SET_CHAR_OPTS(action_script_only, optarg);
+			break;
 		case 'V':
 			pr_msg("Version: %s\n", CRIU_VERSION);
 			if (strcmp(CRIU_GITID, "0"))
--- a/criu/crtools.c
+++ b/criu/crtools.c
@@ -423,6 +423,9 @@
 	       "  --unprivileged        accept limitations when running as non-root\n"
 	       "                        consult documentation for further details\n"
 	       "  --kdat-cache-dir DIR  keep the kernel-feature cache in DIR (a tmpfs)\n"
+	       "  --action-script-only ACTIONS\n"
+	       "                        run the action scripts only for these actions\n"
+	       "                        (comma-separated, e.g. setup-namespaces)\n"
 	       "\n"
 	       "* External resources support:\n"
 	       "  --external RES        dump objects from this list as external resources:\n"
--- a/criu/include/cr_options.h
+++ b/criu/include/cr_options.h
@@ -247,6 +247,8 @@
 	int unprivileged;
 	/* warren: where the kdat cache lives (a tmpfs directory); NULL: the default */
 	char *kdat_cache_dir;
+	/* warren: comma-separated actions the action scripts run for; NULL: all */
+	char *action_script_only;
 };
 
 extern struct cr_options opts;
--- a/criu/action-scripts.c
+++ b/criu/action-scripts.c
@@ -44,6 +44,28 @@
 static int scripts_mode = SCRIPTS_NONE;
 static LIST_HEAD(scripts);
 
+/*
+ * warren: whether --action-script-only (a comma-separated list) names
+ * action. Each script run is a fork and exec (a few ms of a restore); a
+ * caller that acts on one action only spares the others.
+ */
+static bool action_script_wanted(const char *action)
+{
+	const char *p = opts.action_script_only;
+	size_t len = strlen(action);
+
+	if (!p)
+		return true;
+	while (*p) {
+		const char *end = strchrnul(p, ',');
+
+		if ((size_t)(end - p) == len && !strncmp(p, action, len))
+			return true;
+		p = *end ? end + 1 : end;
+	}
+	return false;
+}
+
 static int run_shell_scripts(const char *action)
 {
 	int retval = 0;
@@ -56,6 +78,11 @@
 	if (list_empty(&scripts))
 		return 0;
 
+	if (!action_script_wanted(action)) {
+		pr_debug("	not wanted (--action-script-only)\n");
+		return 0;
+	}
+
 	if (setenv("CRTOOLS_SCRIPT_ACTION", action, 1)) {
 		pr_perror("Can't set CRTOOLS_SCRIPT_ACTION=%s", action);
 		return -1;
PATCH
    cat >"$dir/0005-tmpfs-no-gzip.patch" <<'PATCH'
--- a/criu/config.c
+++ b/criu/config.c
@@ -705,6 +705,7 @@
 		BOOL_OPT("ghost-fiemap", &opts.ghost_fiemap),
 		{ "kdat-cache-dir", required_argument, 0, 1101 },
 		{ "action-script-only", required_argument, 0, 1102 },
+		BOOL_OPT("tmpfs-no-gzip", &opts.tmpfs_no_gzip),
 		{},
 	};
 
--- a/criu/crtools.c
+++ b/criu/crtools.c
@@ -426,6 +426,8 @@
 	       "  --action-script-only ACTIONS\n"
 	       "                        run the action scripts only for these actions\n"
 	       "                        (comma-separated, e.g. setup-namespaces)\n"
+	       "  --tmpfs-no-gzip       dump tmpfs contents as a plain tar; restore\n"
+	       "                        takes a plain or a gzipped one\n"
 	       "\n"
 	       "* External resources support:\n"
 	       "  --external RES        dump objects from this list as external resources:\n"
--- a/criu/include/cr_options.h
+++ b/criu/include/cr_options.h
@@ -249,6 +249,8 @@
 	char *kdat_cache_dir;
 	/* warren: comma-separated actions the action scripts run for; NULL: all */
 	char *action_script_only;
+	/* warren: tmpfs contents as a plain tar, not gzipped */
+	int tmpfs_no_gzip;
 };
 
 extern struct cr_options opts;
--- a/criu/filesystems.c
+++ b/criu/filesystems.c
@@ -416,6 +416,18 @@
 	if (root_ns_mask & CLONE_NEWUSER)
 		userns_pid = root_item->pid->real;
 
+	/*
+	 * warren: --tmpfs-no-gzip spares the gzip process (a fork, an exec
+	 * and the compression) on dump and on restore.
+	 */
+	if (opts.tmpfs_no_gzip)
+		ret = cr_system_userns(fd, img_raw_fd(img), -1, "tar",
+				       (char *[]){ "tar", "--create", "--no-unquote", "--no-wildcards",
+						   "--one-file-system", "--check-links", "--preserve-permissions",
+						   "--sparse", "--numeric-owner", "--directory", "/proc/self/fd/0", ".",
+						   NULL },
+				       0, userns_pid);
+	else
 	ret = cr_system_userns(fd, img_raw_fd(img), -1, "tar",
 			       (char *[]){ "tar", "--create", "--gzip", "--no-unquote", "--no-wildcards",
 					   "--one-file-system", "--check-links", "--preserve-permissions", "--sparse",
@@ -433,6 +445,16 @@
 	return ret;
 }
 
+/* warren: whether the file at fd starts with gzip's magic (or cannot be read) */
+static bool is_gzip_image(int fd)
+{
+	unsigned char magic[2];
+
+	if (pread(fd, magic, sizeof(magic), 0) != sizeof(magic))
+		return true;
+	return magic[0] == 0x1f && magic[1] == 0x8b;
+}
+
 static int tmpfs_restore(struct mount_info *pm)
 {
 	int ret;
@@ -450,6 +472,16 @@
 		return -1;
 	}
 
+	/*
+	 * warren: with --tmpfs-no-gzip, an image without gzip's magic is a
+	 * plain tar (dumped with the option); anything else as before.
+	 */
+	if (opts.tmpfs_no_gzip && !is_gzip_image(img_raw_fd(img)))
+		ret = cr_system(img_raw_fd(img), -1, -1, "tar",
+				(char *[]){ "tar", "--extract", "--no-unquote", "--no-wildcards", "--directory",
+					    service_mountpoint(pm), NULL },
+				0);
+	else
 	ret = cr_system(img_raw_fd(img), -1, -1, "tar",
 			(char *[]){ "tar", "--extract", "--gzip", "--no-unquote", "--no-wildcards", "--directory",
 				    service_mountpoint(pm), NULL },
PATCH
}

patches_dir=$(mktemp -d /tmp/warren-criu-patches.XXXXXX)
trap 'rm -rf "$patches_dir"' EXIT
write_patches "$patches_dir"
patches_sum=$(cat "$patches_dir"/*.patch | sha256sum | cut -d' ' -f1)

have_criu4() {
    local v
    v=$("$dest" --version 2>/dev/null | sed -n 's/^Version: *//p' | head -n1) || return 1
    [[ $v == 4.* ]]
}

have_patched() {
    [[ -f $marker ]] && [[ $(cat "$marker") == "$patches_sum" ]]
}

if [[ -x $dest ]] && have_criu4 && have_patched; then
    log "$($dest --version | head -n1) (warren patches ${patches_sum:0:12}) already installed at $dest"
    exit 0
fi
if [[ -x $dest ]] && have_criu4; then
    log "$dest lacks the current warren patches; rebuilding"
fi

[[ $(id -u) -eq 0 ]] || die "must run as root (try: sudo $0)"
command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian only"

# Build dependencies (from bookworm). The list is what `make criu` needs;
# docs (asciidoc, xmlto) are not built.
build_deps=(
    build-essential dpkg-dev pkg-config
    libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev protobuf-compiler python3-protobuf
    libnl-3-dev libnet1-dev libcap-dev libbsd-dev libgnutls28-dev libnftables-dev
    libaio-dev uuid-dev
)
missing=()
for pkg in "${build_deps[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$pkg")
done
if ((${#missing[@]} > 0)); then
    log "installing build dependencies: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

work=$(mktemp -d /tmp/warren-criu-build.XXXXXX)
trap 'rm -rf "$work" "$patches_dir"' EXIT
trap 'die "failed at line $LINENO (exit $?)"' ERR

# A private apt configuration that knows only trixie's source index.
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/src"
printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s trixie main\n' \
    "$mirror" >"$work/apt/sources.list"
apt_private=(
    -o "Dir::Etc::sourcelist=$work/apt/sources.list"
    -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$work/apt/lists"
    -o "Dir::Cache=$work/apt/cache"
    -o "APT::Get::List-Cleanup=0"
)
log "fetching trixie's criu source package (private apt configuration)"
chmod 0755 "$work"
# apt drops privileges to _apt for downloads; let it write where it must.
if id _apt >/dev/null 2>&1; then chown -R _apt:root "$work/apt" "$work/src"; fi
apt-get "${apt_private[@]}" update -qq
if ! (cd "$work/src" && apt-get "${apt_private[@]}" source -qq criu >/dev/null 2>"$work/source.log"); then
    # Some mirrors (and caching proxies in front of them) carry only part of
    # the pool. Fall back to the upstream tarball of the same source package,
    # fetched by apt's own downloader and checked against the SHA-256 listed
    # in trixie's signed Sources index. (Debian's patches are not applied;
    # `make criu` of the upstream release is what is tested.)
    log "apt-get source failed ($(grep -m1 '^E:' "$work/source.log" || true)); using the orig tarball"
    orig=$(apt-cache "${apt_private[@]}" showsrc criu | awk '
        /^Checksums-Sha256:/ { in_sums = 1; next }
        /^[^ ]/ { in_sums = 0 }
        in_sums && $3 ~ /\.orig\.tar\./ { print $1, $3; exit }')
    [[ -n $orig ]] || die "no orig tarball in trixie's criu source record"
    read -r sha name <<<"$orig"
    /usr/lib/apt/apt-helper "${apt_private[@]}" download-file \
        "$mirror/pool/main/c/criu/$name" "$work/src/$name" "SHA256:$sha" >/dev/null
    tar -xf "$work/src/$name" -C "$work/src"
fi

srcdir=$(find "$work/src" -mindepth 1 -maxdepth 1 -type d -name 'criu-*' | head -n1)
[[ -n $srcdir ]] || die "no criu source directory after apt-get source"
for p in "$patches_dir"/*.patch; do
    log "applying $(basename "$p")"
    patch -d "$srcdir" -p1 --forward --quiet <"$p" || die "patch $(basename "$p") does not apply"
done
log "building $(basename "$srcdir") (make criu)"
make -C "$srcdir" -j"$(nproc)" criu >"$work/build.log" 2>&1 || {
    tail -n 40 "$work/build.log" >&2
    die "make criu failed"
}

# Install atomically (a rename), then record which patches it carries.
rm -f "$marker"
install -D -m 0755 "$srcdir/criu/criu" "$dest.new"
mv -f "$dest.new" "$dest"
have_criu4 || die "$dest does not report version 4.x after install"
printf '%s\n' "$patches_sum" >"$marker"
log "installed $($dest --version | head -n1) (warren patches ${patches_sum:0:12}) at $dest"
