//! The C library's own functions, found past this library with
//! `dlsym(RTLD_NEXT)`. Every call this library makes to a function it also
//! exports goes through here: calling `libc::connect` directly would land
//! in our own `connect` again.

use std::ffi::CStr;
use std::sync::OnceLock;

use libc::{addrinfo, c_char, c_int, c_uint, c_void, size_t, sockaddr, socklen_t, ssize_t};

/// One function pointer, looked up on first use.
pub struct Real<F> {
    name: &'static CStr,
    ptr: OnceLock<usize>,
    _f: std::marker::PhantomData<F>,
}

impl<F: Copy> Real<F> {
    pub const fn new(name: &'static CStr) -> Real<F> {
        Real {
            name,
            ptr: OnceLock::new(),
            _f: std::marker::PhantomData,
        }
    }

    /// The function, or `None` if the C library has none of that name
    /// (then the caller fails with `ENOSYS`).
    pub fn get(&self) -> Option<F> {
        let ptr = *self.ptr.get_or_init(|| {
            // SAFETY: dlsym with a NUL-terminated name; RTLD_NEXT is valid in
            // a shared object.
            unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) as usize }
        });
        if ptr == 0 {
            return None;
        }
        // SAFETY: F is the C signature of `name` (each static below is
        // declared with it), and function pointers are pointer-sized.
        Some(unsafe { std::mem::transmute_copy::<usize, F>(&ptr) })
    }
}

pub type ConnectFn = unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int;
pub type NameFn = unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;
pub type GetsockoptFn =
    unsafe extern "C" fn(c_int, c_int, c_int, *mut c_void, *mut socklen_t) -> c_int;
pub type CloseFn = unsafe extern "C" fn(c_int) -> c_int;
pub type DupFn = unsafe extern "C" fn(c_int) -> c_int;
pub type Dup2Fn = unsafe extern "C" fn(c_int, c_int) -> c_int;
pub type Dup3Fn = unsafe extern "C" fn(c_int, c_int, c_int) -> c_int;
pub type CloseRangeFn = unsafe extern "C" fn(c_uint, c_uint, c_int) -> c_int;
pub type GetaddrinfoFn = unsafe extern "C" fn(
    *const c_char,
    *const c_char,
    *const addrinfo,
    *mut *mut addrinfo,
) -> c_int;
pub type FreeaddrinfoFn = unsafe extern "C" fn(*mut addrinfo);
pub type SendtoFn = unsafe extern "C" fn(
    c_int,
    *const c_void,
    size_t,
    c_int,
    *const sockaddr,
    socklen_t,
) -> ssize_t;
pub type SendmsgFn = unsafe extern "C" fn(c_int, *const libc::msghdr, c_int) -> ssize_t;
pub type SendmmsgFn = unsafe extern "C" fn(c_int, *mut libc::mmsghdr, c_uint, c_int) -> c_int;

pub type RecvfromFn = unsafe extern "C" fn(
    c_int,
    *mut c_void,
    size_t,
    c_int,
    *mut sockaddr,
    *mut socklen_t,
) -> ssize_t;
pub type RecvmsgFn = unsafe extern "C" fn(c_int, *mut libc::msghdr, c_int) -> ssize_t;
pub type RecvmmsgFn =
    unsafe extern "C" fn(c_int, *mut libc::mmsghdr, c_uint, c_int, *mut libc::timespec) -> c_int;

pub type Gethostbyname2RFn = unsafe extern "C" fn(
    *const c_char,
    c_int,
    *mut libc::hostent,
    *mut c_char,
    size_t,
    *mut *mut libc::hostent,
    *mut c_int,
) -> c_int;

pub type Gethostbyname2Fn = unsafe extern "C" fn(*const c_char, c_int) -> *mut libc::hostent;
pub type GethostbynameFn = unsafe extern "C" fn(*const c_char) -> *mut libc::hostent;

pub type GetnameinfoFn = unsafe extern "C" fn(
    *const sockaddr,
    socklen_t,
    *mut c_char,
    socklen_t,
    *mut c_char,
    socklen_t,
    c_int,
) -> c_int;
pub type GethostbyaddrRFn = unsafe extern "C" fn(
    *const c_void,
    socklen_t,
    c_int,
    *mut libc::hostent,
    *mut c_char,
    size_t,
    *mut *mut libc::hostent,
    *mut c_int,
) -> c_int;
pub type GethostbyaddrFn =
    unsafe extern "C" fn(*const c_void, socklen_t, c_int) -> *mut libc::hostent;

pub static CONNECT: Real<ConnectFn> = Real::new(c"connect");
pub static GETPEERNAME: Real<NameFn> = Real::new(c"getpeername");
pub static GETSOCKOPT: Real<GetsockoptFn> = Real::new(c"getsockopt");
pub static CLOSE: Real<CloseFn> = Real::new(c"close");
pub static DUP: Real<DupFn> = Real::new(c"dup");
pub static DUP2: Real<Dup2Fn> = Real::new(c"dup2");
pub static DUP3: Real<Dup3Fn> = Real::new(c"dup3");
pub static CLOSE_RANGE: Real<CloseRangeFn> = Real::new(c"close_range");
pub static GETADDRINFO: Real<GetaddrinfoFn> = Real::new(c"getaddrinfo");
pub static FREEADDRINFO: Real<FreeaddrinfoFn> = Real::new(c"freeaddrinfo");
pub static SENDTO: Real<SendtoFn> = Real::new(c"sendto");
pub static SENDMSG: Real<SendmsgFn> = Real::new(c"sendmsg");
pub static SENDMMSG: Real<SendmmsgFn> = Real::new(c"sendmmsg");
pub static GETHOSTBYNAME2_R: Real<Gethostbyname2RFn> = Real::new(c"gethostbyname2_r");
pub static GETHOSTBYNAME2: Real<Gethostbyname2Fn> = Real::new(c"gethostbyname2");
pub static GETHOSTBYNAME: Real<GethostbynameFn> = Real::new(c"gethostbyname");
pub static RECVFROM: Real<RecvfromFn> = Real::new(c"recvfrom");
pub static RECVMSG: Real<RecvmsgFn> = Real::new(c"recvmsg");
pub static RECVMMSG: Real<RecvmmsgFn> = Real::new(c"recvmmsg");
pub static GETNAMEINFO: Real<GetnameinfoFn> = Real::new(c"getnameinfo");
pub static GETHOSTBYADDR_R: Real<GethostbyaddrRFn> = Real::new(c"gethostbyaddr_r");
pub static GETHOSTBYADDR: Real<GethostbyaddrFn> = Real::new(c"gethostbyaddr");
