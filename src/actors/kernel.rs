//! The seam where a message nobody understands is handed over.
//!
//! An [`super::object::ObjectActor`] whose operation ends in a [`Miss`] sends one [`Understand`]
//! to the kernel recipient it was given. `Ok(())` means the kernel changed the world so that the
//! message may now be understood (e.g. it installed a method): the object runs the original
//! message again. An error is the answer to the original message.

use actix::prelude::*;

use crate::error::TelosError;
use crate::sandbox::Miss;

/// Asks the kernel to make `miss.receiver` understand `miss.selector`.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), TelosError>")]
pub struct Understand {
    pub miss: Miss,
}

/// The kernel of a world without a generative kernel: every miss is a `does_not_understand`.
pub struct NoKernel;

impl Actor for NoKernel {
    type Context = Context<Self>;
}

impl Handler<Understand> for NoKernel {
    type Result = Result<(), TelosError>;

    fn handle(&mut self, msg: Understand, _: &mut Context<Self>) -> Self::Result {
        Err(TelosError::DoesNotUnderstand {
            receiver: msg.miss.receiver,
            selector: msg.miss.selector,
        })
    }
}
